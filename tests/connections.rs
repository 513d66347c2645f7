//! `herald serve` under slow, idle and too many clients: raw TCP connections against the real
//! binary, with short limits set in herald.yaml.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Served {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(server: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        format!("channels:\n  email: {{ provider: log }}\nserver: {server}\n"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(
        dir.path().join("workflows/hook.yaml"),
        "kind: workflow\nid: hook\ntriggers:\n  - webhook: { path: /hooks/in }\nsteps:\n  - set: { x: 1 }\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--no-watch", "--dir"])
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--database-url", "sqlite://herald.db"])
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "herald serve never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    Served {
        child,
        port,
        _dir: dir,
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the server closes the connection (or 10 s pass), returning what it sent.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    if let Err(e) = s.read_to_end(&mut out) {
        // A reset after the answer loses nothing already read.
        eprintln!("read ended with {e} after {} bytes", out.len());
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn post(port: u16) -> String {
    let mut s = connect(port);
    s.write_all(
        b"POST /hooks/in HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
    )
    .unwrap();
    read_to_close(&mut s)
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let h = serve("{ header_timeout: 1s }");
    let mut slow = connect(h.port);
    slow.write_all(b"POST /hooks/in HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut slow);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "closed by the server, not by the test's own read timeout: {answer:?}"
    );
    // An idle keep-alive connection is closed the same way.
    let mut idle = connect(h.port);
    idle.write_all(b"POST /hooks/in HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
        .unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut idle);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(8), "{answer}");
}

#[test]
fn a_body_that_never_arrives_gets_408() {
    let h = serve("{ body_timeout: 1s }");
    let mut s = connect(h.port);
    s.write_all(b"POST /hooks/in HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\":")
        .unwrap();
    let answer = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\":\"body_timeout\""), "{answer}");
    assert!(answer.contains("server.body_timeout"), "{answer}");
}

#[test]
fn connections_over_the_cap_get_503_and_the_rest_still_work() {
    let h = serve("{ max_connections: 3, header_timeout: 2s }");
    // Let the start-up probe's connection close first: it held a place too.
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<TcpStream> = (0..3).map(|_| connect(h.port)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = connect(h.port);
    let answer = read_to_close(&mut extra);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(
        answer.ends_with("try again\"}"),
        "a whole JSON body: {answer}"
    );
    // The idle ones time out, and a real request gets through again.
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let answer = post(h.port);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
}

#[test]
fn shutdown_does_not_wait_for_idle_clients() {
    let mut h = serve("{ header_timeout: 60s, drain_timeout: 5s }");
    let _idle: Vec<TcpStream> = (0..20).map(|_| connect(h.port)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(h.child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = h.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "herald serve did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "idle connections are closed at once, not waited for ({:?})",
        started.elapsed()
    );
}

#[test]
fn oversized_requests_get_json_errors() {
    let h = serve("{}");
    let long = format!("/hooks/in?x={}", "a".repeat(10_000));
    let mut s = connect(h.port);
    write!(
        s,
        "GET {long} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let answer = read_to_close(&mut s);
    assert!(
        answer.starts_with("HTTP/1.1 414"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(answer.contains("\"error\":\"uri_too_long\""), "{answer}");

    let mut s = connect(h.port);
    let mut req = String::from("POST /hooks/in HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    for i in 0..150 {
        req.push_str(&format!("x-filler-{i}: {i}\r\n"));
    }
    req.push_str("content-length: 2\r\n\r\n{}");
    s.write_all(req.as_bytes()).unwrap();
    let answer = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(
        answer.contains("\"error\":\"headers_too_large\""),
        "{answer}"
    );
}
