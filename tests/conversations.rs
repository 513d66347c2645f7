//! Conversations, end to end on the engine: a message starts one, its `ask`s take the
//! person's next messages one at a time, answers that do not fit are asked again, it ends for
//! inactivity, on `/reset` or at `end`, and `ai_reply` answers through a fake OpenAI-compatible
//! server on loopback within its guardrails. Every scenario runs on SQLite and on PostgreSQL.

#[path = "support/db.rs"]
mod db;
#[path = "support/engine.rs"]
mod engine_support;
mod support;

use std::time::Duration;

use engine_support::Harness;
use herald::store::{RunFilter, RunRecord, RunStatus};
use serde_json::{Value, json};
use support::Reply;

db::scenarios!["conversations";
    an_answer_that_does_not_fit_is_asked_again_until_it_does,
    the_attempts_run_out_and_the_conversation_says_so,
    inactivity_ends_the_conversation_with_its_closing_message,
    reset_ends_the_open_conversation_and_a_start_follows_the_policy,
    ten_messages_in_a_second_are_answered_once_each_in_order,
    empty_huge_and_emoji_messages_are_handled_and_a_message_after_the_end_starts_anew,
    the_user_never_sees_a_phrase_the_ai_must_not_say,
    the_ai_falls_back_on_a_timeout_or_an_error,
    a_waiting_ask_uses_the_edited_text_after_a_reload,
    a_workflow_can_call_a_conversation,
    classify_picks_the_intent_and_goes_where_it_says,
    a_person_takes_over_and_gives_the_conversation_back,
    a_handoff_nobody_releases_gives_the_conversation_back_at_its_timeout,
    a_sender_address_is_never_read_as_a_template,
    a_queued_start_waits_for_the_open_conversation_to_end,
    a_model_classifies_what_no_keyword_does_and_only_into_the_intents,
];

const PHONE: &str = "+18015550100";

const CATHY: &str = r#"
kind: conversation
id: cathy
channels: [sms]
start:
  - keyword: [hi, hello]
  - match: "(?i)car loan"
inactivity: { after: 30m, say: "I'll be here when you're ready." }
slots:
  phone: { type: phone }
  consent: { type: yes_no }
steps:
  - say: "Hi! I'm Cathy. Whatever your credit history, we can look at options together."
  - id: ask_phone
    ask:
      prompt: "What's the best number to reach you?"
      slot: phone
      reprompt: "Sorry, that doesn't look like a phone number. Could you send it again?"
      max_attempts: 3
      give_up: "No problem, a person will follow up."
  - id: ask_consent
    ask:
      prompt: "May we run a soft credit check? It won't affect your score. (yes/no)"
      slot: consent
  - if: "slots.consent"
    then:
      - end: "Thanks! We'll text {{ slots.phone }} shortly."
  - end: "Understood, we won't run it."
"#;

/// The bodies sent to the person by run `id`, in order.
async fn said(h: &Harness, id: &str) -> Vec<String> {
    h.engine
        .store
        .outbox_for_run(id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect()
}

async fn text(h: &Harness, from: &str, body: &str) -> Vec<String> {
    let routed = h
        .engine
        .inbound_message("sms", from, body, None)
        .await
        .unwrap();
    h.settle().await;
    routed.started_runs
}

async fn runs_of(h: &Harness, id: &str) -> Vec<RunRecord> {
    let mut runs = h
        .engine
        .store
        .list_runs(&RunFilter {
            workflow_id: Some(id.into()),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    runs.reverse();
    runs
}

async fn an_answer_that_does_not_fit_is_asked_again_until_it_does(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/cathy.yaml", CATHY)]).await;
    let started = text(&h, PHONE, "Hello").await;
    assert_eq!(started.len(), 1);
    let id = &started[0];
    let run = h.run(id).await;
    assert_eq!(run.status, RunStatus::Waiting);
    assert_eq!(run.labels["conversation"], format!("sms:{PHONE}"));
    assert_eq!(
        said(&h, id).await,
        [
            "Hi! I'm Cathy. Whatever your credit history, we can look at options together.",
            "What's the best number to reach you?"
        ]
    );
    // An open conversation takes the message: nothing new starts, even on a start word.
    assert!(text(&h, PHONE, "call me maybe").await.is_empty());
    assert!(text(&h, PHONE, "hi").await.is_empty());
    assert_eq!(said(&h, id).await.len(), 4, "{:?}", said(&h, id).await);
    text(&h, PHONE, "(801) 555-0199").await;
    text(&h, PHONE, "Yes!").await;
    let run = h.run(id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(
        run.context["slots"],
        json!({"phone": "+18015550199", "consent": true})
    );
    let said = said(&h, id).await;
    assert_eq!(
        &said[2..],
        [
            "Sorry, that doesn't look like a phone number. Could you send it again?",
            "Sorry, that doesn't look like a phone number. Could you send it again?",
            "May we run a soft credit check? It won't affect your score. (yes/no)",
            "Thanks! We'll text +18015550199 shortly."
        ]
    );
    let trail = h.trail(id).await;
    assert!(
        trail.contains(&"ask_phone:completed".to_owned()),
        "{trail:?}"
    );
    let turns = run.context["conversation"]["turns"].as_array().unwrap();
    assert_eq!(turns[0]["text"], "Hello");
    assert_eq!(
        turns.last().unwrap()["text"],
        "Thanks! We'll text +18015550199 shortly."
    );
}

async fn the_attempts_run_out_and_the_conversation_says_so(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/cathy.yaml", CATHY)]).await;
    let id = text(&h, PHONE, "I need a car loan").await.remove(0);
    for bad in ["no", "nope", "still no"] {
        text(&h, PHONE, bad).await;
    }
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.context["conversation"]["ended"], "gave_up");
    let said = said(&h, &id).await;
    assert_eq!(said.last().unwrap(), "No problem, a person will follow up.");
    assert_eq!(
        said.len(),
        5,
        "greeting, prompt, two re-prompts, give-up: {said:?}"
    );
}

async fn inactivity_ends_the_conversation_with_its_closing_message(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/cathy.yaml", CATHY)]).await;
    let id = text(&h, PHONE, "hi").await.remove(0);
    h.advance(Duration::from_secs(29 * 60)).await;
    assert_eq!(h.run(&id).await.status, RunStatus::Waiting);
    h.advance(Duration::from_secs(2 * 60)).await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.context["conversation"]["ended"], "inactivity");
    assert_eq!(
        said(&h, &id).await.last().unwrap(),
        "I'll be here when you're ready."
    );
    // A message after the end is not taken by the ended conversation.
    assert!(
        text(&h, PHONE, "sorry, here: 801 555 0100")
            .await
            .is_empty()
    );
    assert_eq!(said(&h, &id).await.len(), 3);
}

async fn reset_ends_the_open_conversation_and_a_start_follows_the_policy(db: db::TestDb) {
    let restart = CATHY
        .replace("id: cathy", "id: cathy2")
        .replace("inactivity:", "while_open: restart\ninactivity:");
    let h = Harness::new(db, &[("workflows/cathy.yaml", &restart)]).await;
    let first = text(&h, PHONE, "hi").await.remove(0);
    // A start while open replaces the open conversation.
    let second = text(&h, PHONE, "hello").await.remove(0);
    assert_eq!(h.run(&first).await.status, RunStatus::Cancelled);
    assert_eq!(h.run(&second).await.status, RunStatus::Waiting);
    // `/reset` ends it; the next message that is no start starts nothing.
    assert!(text(&h, PHONE, "/RESET").await.is_empty());
    assert_eq!(h.run(&second).await.status, RunStatus::Cancelled);
    assert!(text(&h, PHONE, "801 555 0100").await.is_empty());
    let unmatched = h
        .engine
        .store
        .find_event("message.unmatched", PHONE, 0, &[])
        .await
        .unwrap();
    assert_eq!(unmatched.unwrap().data["text"], "801 555 0100");
    assert_eq!(runs_of(&h, "cathy2").await.len(), 2);
}

async fn ten_messages_in_a_second_are_answered_once_each_in_order(db: db::TestDb) {
    let echo = r#"
kind: conversation
id: echo
channels: [sms]
start: [{ any_message: true }]
steps:
  - id: listen
    ask: {}
  - say: "got {{ steps.listen.output.value }}"
  - goto: listen
"#;
    let h = Harness::new(db, &[("workflows/echo.yaml", echo)]).await;
    let id = text(&h, PHONE, "start").await.remove(0);
    let mut sends = Vec::new();
    for i in 0..10 {
        let engine = h.engine.clone();
        sends.push(tokio::spawn(async move {
            engine
                .inbound_message("sms", PHONE, &format!("m{i}"), Some(&format!("SM{i}")))
                .await
                .unwrap()
        }));
        // Each arrives a tenth of a second after the last, before any is answered.
        h.clock.advance(Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for s in sends {
        assert!(s.await.unwrap().started_runs.is_empty());
    }
    h.settle().await;
    let said = said(&h, &id).await;
    let want: Vec<String> = (0..10).map(|i| format!("got m{i}")).collect();
    assert_eq!(said, want);
    assert_eq!(runs_of(&h, "echo").await.len(), 1);
}

async fn empty_huge_and_emoji_messages_are_handled_and_a_message_after_the_end_starts_anew(
    db: db::TestDb,
) {
    let h = Harness::new(db, &[("workflows/cathy.yaml", CATHY)]).await;
    let id = text(&h, PHONE, "hi").await.remove(0);
    text(&h, PHONE, "").await;
    text(&h, PHONE, &"9".repeat(100_000)).await;
    assert_eq!(
        h.run(&id).await.status,
        RunStatus::Waiting,
        "two answers that do not fit"
    );
    // The number is read past the emoji around it; a thumbs-up is a yes.
    text(&h, PHONE, "📞 801-555-0100 🙂").await;
    text(&h, PHONE, "👍").await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(
        run.context["slots"],
        json!({"phone": "+18015550100", "consent": true})
    );
    // A message after the end goes to no conversation; a start opens a new one.
    assert!(text(&h, PHONE, "thanks!").await.is_empty());
    assert_eq!(said(&h, &id).await.len(), 6);
    let again = text(&h, PHONE, "hello").await;
    assert_eq!(
        again.len(),
        1,
        "a start after the end opens a new conversation"
    );
    for bad in ["🙂", " ", "\u{200b}"] {
        text(&h, PHONE, bad).await;
    }
    let run = h.run(&again[0]).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.context["conversation"]["ended"], "gave_up");
    // A huge message is kept short in the run's context.
    let first = h.run(&id).await;
    let longest = first.context["conversation"]["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap().chars().count())
        .max()
        .unwrap();
    assert!(longest <= 2001, "{longest}");
}

fn ai_config(timeout: &str) -> String {
    format!(
        "channels:\n  email: {{ provider: log }}\n  sms: {{ provider: log }}\nai:\n  fake:\n    base_url: \"{{{{SINK}}}}/v1\"\n    model: test-model\n    api_key: \"${{env:API_TOKEN}}\"\n    timeout: {timeout}\n    max_tokens: 120\n"
    )
}

const RESPONDER: &str = r#"
kind: conversation
id: responder
channels: [sms]
start: [{ any_message: true }]
steps:
  - id: answer
    ai_reply:
      provider: fake
      system: "You are Cathy of Acme Auto. Be kind about credit."
      turns: 6
      never_say: ["bad credit"]
      max_chars: 300
      fallback: "Thanks! A person from Acme Auto will reply shortly."
  - id: listen
    ask: {}
  - goto: answer
"#;

fn completion(text: &str) -> Reply {
    Reply::ok().json(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}
    }))
}

async fn the_user_never_sees_a_phrase_the_ai_must_not_say(db: db::TestDb) {
    let config = ai_config("2s");
    let h = Harness::new(
        db,
        &[
            ("herald.yaml", &config),
            ("workflows/responder.yaml", RESPONDER),
        ],
    )
    .await;
    // A blocked reply, then a clean rewrite.
    h.sink
        .respond_next(1, completion("Even with Bad  Credit you qualify!"));
    h.sink.respond_next(
        1,
        completion("Whatever your credit history, you may qualify."),
    );
    let id = text(&h, PHONE, "I have bad credit, can I get a loan?")
        .await
        .remove(0);
    // Blocked twice: the fallback.
    h.sink
        .respond_next(2, completion("Sorry about your BAD CREDIT."));
    text(&h, PHONE, "really?").await;
    let said = said(&h, &id).await;
    assert_eq!(
        said,
        [
            "Whatever your credit history, you may qualify.",
            "Thanks! A person from Acme Auto will reply shortly."
        ]
    );
    assert!(
        said.iter()
            .all(|s| !s.to_lowercase().contains("bad credit"))
    );
    let requests = h.sink.requests();
    assert_eq!(requests.len(), 4);
    let first = &requests[0];
    assert_eq!(first.path, "/v1/chat/completions");
    assert_eq!(first.header("authorization"), Some("Bearer t0ken"));
    assert_eq!(first.json["model"], "test-model");
    assert_eq!(first.json["max_tokens"], 120);
    assert_eq!(first.json["messages"][0]["role"], "system");
    assert_eq!(
        first.json["messages"][1]["content"],
        "I have bad credit, can I get a loan?"
    );
    // The rewrite request shows the model its blocked draft and asks again.
    let rewrite = requests[1].json["messages"].as_array().unwrap();
    assert!(
        rewrite[rewrite.len() - 1]["content"]
            .as_str()
            .unwrap()
            .contains("does not say \"bad credit\"")
    );
    // The second answer sees the conversation so far.
    let later = requests[2].json["messages"].as_array().unwrap();
    assert_eq!(
        later[2]["content"],
        "Whatever your credit history, you may qualify."
    );
    assert_eq!(later[3]["content"], "really?");
    let run = h.run(&id).await;
    assert_eq!(run.context["conversation"]["usage"]["total_tokens"], 240);
    let steps = h.steps(&id).await;
    let blocked = steps
        .iter()
        .filter(|s| {
            s.step_id == "answer" && s.output.as_ref().is_some_and(|o| o["source"] == "fallback")
        })
        .count();
    assert_eq!(blocked, 1);
}

async fn the_ai_falls_back_on_a_timeout_or_an_error(db: db::TestDb) {
    let config = ai_config("1s");
    let h = Harness::new(
        db,
        &[
            ("herald.yaml", &config),
            ("workflows/responder.yaml", RESPONDER),
        ],
    )
    .await;
    h.sink
        .respond_next(1, completion("too late").after(Duration::from_secs(3)));
    let id = text(&h, PHONE, "hello?").await.remove(0);
    h.sink.respond_next(
        1,
        Reply::status(500).json(json!({"error": {"message": "overloaded"}})),
    );
    text(&h, PHONE, "anyone?").await;
    let said = said(&h, &id).await;
    assert_eq!(said.len(), 2);
    assert!(
        said.iter()
            .all(|s| s == "Thanks! A person from Acme Auto will reply shortly.")
    );
    let reasons: Vec<Value> = h
        .steps(&id)
        .await
        .into_iter()
        .filter(|s| s.step_id == "answer")
        .filter_map(|s| s.output.map(|o| o["reason"].clone()))
        .collect();
    assert!(
        reasons[0].as_str().unwrap().contains("within"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].as_str().unwrap().contains("overloaded"),
        "{reasons:?}"
    );
}

async fn a_waiting_ask_uses_the_edited_text_after_a_reload(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/cathy.yaml", CATHY)]).await;
    let id = text(&h, PHONE, "hi").await.remove(0);
    h.write(
        "workflows/cathy.yaml",
        &CATHY.replace(
            "Sorry, that doesn't look like a phone number. Could you send it again?",
            "Please send a phone number, like 801-555-0100.",
        ),
    );
    h.reload().await;
    text(&h, PHONE, "what?").await;
    assert_eq!(
        said(&h, &id).await.last().unwrap(),
        "Please send a phone number, like 801-555-0100."
    );
}

async fn a_workflow_can_call_a_conversation(db: db::TestDb) {
    let lead = r#"
kind: workflow
id: lead
triggers:
  - webhook: { path: /lead }
steps:
  - id: chat
    call: { workflow: cathy, input: { channel: sms, to: "{{ body.phone }}" } }
"#;
    let h = Harness::new(
        db,
        &[
            ("workflows/cathy.yaml", CATHY),
            ("workflows/lead.yaml", lead),
        ],
    )
    .await;
    let parent = h.start("lead", json!({"phone": PHONE})).await;
    let child = runs_of(&h, "cathy").await.remove(0);
    assert_eq!(said(&h, &child.id).await.len(), 2);
    // The person's reply goes to the conversation the workflow started.
    text(&h, PHONE, "801 555 0100").await;
    text(&h, PHONE, "no").await;
    assert_eq!(h.run(&child.id).await.status, RunStatus::Completed);
    assert_eq!(h.run(&parent).await.status, RunStatus::Completed);
}

/// A conversation's mistakes are reported at their place, like a workflow's.
#[test]
fn mistakes_in_a_conversation_are_reported_at_file_line_col() {
    use herald::definitions::project::{EnvMode, Layout, LoadOptions, load};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        "channels:\n  sms: { provider: log }\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(
        dir.path().join("workflows/bot.yaml"),
        r#"kind: conversation
id: bot
channels: [smss]
start: [{ match: "(unclosed" }]
slots:
  phone: { type: phone }
steps:
  - id: ask_phone
    ask: { prompt: "Your number?", slot: phon }
  - classify:
      intents:
        yes: { keywords: [yes], goto: confirm }
  - ai_reply: { provider: openai, system: "Be kind", fallback: "Later!" }
  - goto: ask_phon
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("workflows/flow.yaml"),
        "kind: workflow\nid: flow\nsteps:\n  - say: hello\n",
    )
    .unwrap();
    let layout = Layout::discover(dir.path()).unwrap();
    let (_, report) = load(&layout, &LoadOptions::new(EnvMode::Validate));
    let text: String = report.diagnostics.iter().map(|d| d.render(false)).collect();
    for want in [
        "bot.yaml:3:12",
        "channel `smss` is not defined",
        "bot.yaml:4:18",
        "invalid regular expression",
        "bot.yaml:9:42",
        "slot `phon` is not declared",
        "did you mean `phone`?",
        "no step `confirm` to go to",
        "ai provider `openai` is not defined",
        "bot.yaml:14:11",
        "did you mean `ask_phone`?",
        "flow.yaml:4:5",
        "unknown field `say`",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

async fn classify_picks_the_intent_and_goes_where_it_says(db: db::TestDb) {
    let bot = r#"
kind: conversation
id: bot
channels: [sms]
start: [{ command: start }]
steps:
  - say: "Linked {{ message.command.payload }}. Ask me about hours or prices."
  - id: listen
    ask: {}
  - classify:
      intents:
        hours: { keywords: [hours, open, "opening time"] }
        prices: { match: "(?i)\\b(price|cost)s?\\b", goto: prices }
        bye: { keywords: [bye], goto: bye }
  - say: "{{ 'We open at 9.' if steps._3.output.intent == 'hours' else 'Sorry, I did not get that.' }}"
  - goto: listen
  - id: prices
    say: "Loans start at 5.9% APR."
  - goto: listen
  - id: bye
    end: "Bye!"
"#;
    let h = Harness::new(db, &[("workflows/bot.yaml", bot)]).await;
    let id = text(&h, PHONE, "/start +15551234567").await.remove(0);
    for m in ["When are you OPEN?", "what does it cost", "huh", "bye"] {
        text(&h, PHONE, m).await;
    }
    assert_eq!(
        said(&h, &id).await,
        [
            "Linked +15551234567. Ask me about hours or prices.",
            "We open at 9.",
            "Loans start at 5.9% APR.",
            "Sorry, I did not get that.",
            "Bye!"
        ]
    );
    assert_eq!(h.run(&id).await.status, RunStatus::Completed);
}

const TAKEOVER: &str = r#"
kind: conversation
id: takeover
channels: [sms]
start:
  - any_message: true
steps:
  - id: human
    handoff:
      say: "A colleague will answer you here."
      reason: "asked for a person"
      timeout: 10m
      timeout_say: "Sorry, nobody is free right now; I'm back."
  - id: more
    ask: { prompt: "Anything else I can help with?" }
  - end: "Noted: {{ conversation.last }}"
"#;

/// The directions and texts of a conversation's transcript, in order.
async fn transcript(h: &Harness, id: &str) -> (Value, Vec<(String, String)>) {
    let t = h.engine.transcript(id).await.unwrap();
    let lines = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["direction"].as_str().unwrap().to_owned(),
                m["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (t, lines)
}

async fn a_person_takes_over_and_gives_the_conversation_back(db: db::TestDb) {
    use herald::engine::inbox::InboxError;
    let h = Harness::new(db, &[("workflows/takeover.yaml", TAKEOVER)]).await;
    let id = text(&h, PHONE, "I want to talk to a person")
        .await
        .remove(0);
    assert_eq!(h.run(&id).await.status, RunStatus::Waiting);
    let announced = h
        .engine
        .store
        .find_event("conversation.handoff", &id, 0, &[])
        .await
        .unwrap()
        .expect("the handoff is announced for the agents");
    assert_eq!(announced.data["address"], PHONE);
    assert_eq!(announced.data["reason"], "asked for a person");
    // The clock moves between messages, so the transcript's order is the clock's.
    let tick = Duration::from_secs(1);
    h.advance(tick).await;
    // While a person has it, the bot says nothing; the message goes to the agents.
    assert!(text(&h, PHONE, "hello? anyone there? 🙂").await.is_empty());
    assert_eq!(said(&h, &id).await, ["A colleague will answer you here."]);
    let passed = h
        .engine
        .store
        .find_event("conversation.message", &id, 0, &[])
        .await
        .unwrap();
    assert_eq!(passed.unwrap().data["text"], "hello? anyone there? 🙂");
    let (t, _) = transcript(&h, &id).await;
    assert_eq!(t["handed_off"], true);
    h.advance(tick).await;
    h.engine
        .agent_reply(&id, "Hi, I'm Sam. How can I help?", Some("sam"), Some("r1"))
        .await
        .unwrap();
    // The same reply sent again (a client retry) is one message.
    h.engine
        .agent_reply(&id, "Hi, I'm Sam. How can I help?", Some("sam"), Some("r1"))
        .await
        .unwrap();
    h.settle().await;
    assert!(matches!(
        h.engine.agent_reply(&id, "  ", None, None).await,
        Err(InboxError::Invalid(_))
    ));
    h.advance(tick).await;
    h.engine
        .release_conversation(&id, Some("sam"))
        .await
        .unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Waiting, "{:?}", run.error);
    assert_eq!(
        said(&h, &id).await,
        [
            "A colleague will answer you here.",
            "Hi, I'm Sam. How can I help?",
            "Anything else I can help with?"
        ]
    );
    // The messages the agents had are not answers to the bot's next question.
    h.advance(tick).await;
    text(&h, PHONE, "no thanks").await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(said(&h, &id).await.last().unwrap(), "Noted: no thanks");
    let (t, lines) = transcript(&h, &id).await;
    assert_eq!(t["handed_off"], false);
    assert_eq!(
        lines,
        [
            ("in", "I want to talk to a person"),
            ("out", "A colleague will answer you here."),
            ("in", "hello? anyone there? 🙂"),
            ("out", "Hi, I'm Sam. How can I help?"),
            ("out", "Anything else I can help with?"),
            ("in", "no thanks"),
            ("out", "Noted: no thanks"),
        ]
        .map(|(d, t)| (d.to_owned(), t.to_owned()))
    );
    let steps: Vec<Value> = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["step"].clone())
        .collect();
    assert_eq!(steps[3], "agent");
    assert_eq!(steps[4], "more");
    assert_eq!(t["messages"][0]["channel"], "sms");
    // After the end, nobody can answer in the bot's place or release it.
    assert!(matches!(
        h.engine
            .agent_reply(&id, "one more thing", None, None)
            .await,
        Err(InboxError::Conflict(_))
    ));
    assert!(matches!(
        h.engine.release_conversation(&id, None).await,
        Err(InboxError::Conflict(_))
    ));
    assert!(matches!(
        h.engine.transcript("no-such-run").await,
        Err(InboxError::NotFound(_))
    ));
}

async fn a_handoff_nobody_releases_gives_the_conversation_back_at_its_timeout(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/takeover.yaml", TAKEOVER)]).await;
    let id = text(&h, PHONE, "hey").await.remove(0);
    h.advance(Duration::from_secs(9 * 60)).await;
    assert_eq!(said(&h, &id).await.len(), 1);
    h.advance(Duration::from_secs(2 * 60)).await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Waiting);
    assert_eq!(
        said(&h, &id).await,
        [
            "A colleague will answer you here.",
            "Sorry, nobody is free right now; I'm back.",
            "Anything else I can help with?"
        ]
    );
    let log = h.engine.store.step_log(&id).await.unwrap();
    let handoff = log.iter().rev().find(|s| s.step_id == "human").unwrap();
    assert_eq!(handoff.output.as_ref().unwrap()["timed_out"], true);
}

/// A reply goes to the address the message came from, as it is: an address is never
/// compiled as a template (it once was, inside `{% raw %}`, which this one would break out of,
/// and every address compiled stayed in memory).
async fn a_sender_address_is_never_read_as_a_template(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/echo.yaml",
            "kind: conversation\nid: echo\nchannels: [email]\nstart:\n  - any_message: true\nsteps:\n  - end: \"Got it.\"\n",
        )],
    )
    .await;
    let from = "x{% endraw %}{{ 7 * 7 }}{% raw %}@example.com";
    let routed = h
        .engine
        .inbound_message("email", from, "hello", None)
        .await
        .unwrap();
    h.settle().await;
    let id = routed
        .started_runs
        .first()
        .expect("a conversation started")
        .clone();
    let out = h.engine.store.outbox_for_run(&id).await.unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].body, "Got it.");
    assert_eq!(
        out[0].recipient, from,
        "sent to the address as it came, unrendered"
    );
}

const QUEUED: &str = r#"
kind: conversation
id: support
channels: [sms]
start:
  - keyword: [support]
while_open: queue
steps:
  - id: topic
    ask: { prompt: "What do you need help with?" }
  - end: "Noted: {{ steps.topic.output.text }}. Someone will call."
"#;

/// `while_open: queue`: a second start waits, holding no worker and taking no message, and
/// starts with its own message once the first conversation ends; `/reset` drops what waits.
async fn a_queued_start_waits_for_the_open_conversation_to_end(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/support.yaml", QUEUED)]).await;
    let promote = || async { h.engine.promote_queued_conversations().await.unwrap() };
    let first = text(&h, PHONE, "support").await.remove(0);
    let second = text(&h, PHONE, "SUPPORT").await.remove(0);
    assert_eq!(h.run(&second).await.status, RunStatus::Waiting);
    assert!(
        said(&h, &second).await.is_empty(),
        "the queued one says nothing yet"
    );
    assert_eq!(promote().await, 0, "the first is still open");

    // The answer goes to the open conversation, not the queued one.
    h.advance(Duration::from_secs(5)).await;
    text(&h, PHONE, "my card").await;
    assert_eq!(h.run(&first).await.status, RunStatus::Completed);
    assert_eq!(
        said(&h, &first).await,
        [
            "What do you need help with?",
            "Noted: my card. Someone will call."
        ]
    );
    h.advance(Duration::from_secs(1)).await;
    assert_eq!(promote().await, 1);
    assert_eq!(promote().await, 0, "promoted once");
    h.settle().await;
    assert_eq!(
        said(&h, &second).await,
        ["What do you need help with?"],
        "it asks, and takes none of the messages the first one had"
    );
    h.advance(Duration::from_secs(5)).await;
    text(&h, PHONE, "my loan").await;
    assert_eq!(
        said(&h, &second).await.last().unwrap(),
        "Noted: my loan. Someone will call."
    );

    // Two waiting behind an open one; a reset ends the open one and drops both.
    h.advance(Duration::from_secs(5)).await;
    let third = text(&h, PHONE, "support").await.remove(0);
    let fourth = text(&h, PHONE, "support").await.remove(0);
    let fifth = text(&h, PHONE, "support").await.remove(0);
    text(&h, PHONE, "/reset").await;
    for id in [&third, &fourth, &fifth] {
        assert_eq!(h.run(id).await.status, RunStatus::Cancelled, "{id}");
    }
    assert_eq!(promote().await, 0);
    // Another person's queue is their own.
    let other = "+18015550199";
    h.advance(Duration::from_secs(5)).await;
    let a = text(&h, other, "support").await.remove(0);
    let b = text(&h, other, "support").await.remove(0);
    h.engine.cancel(&a).await.unwrap();
    h.advance(Duration::from_secs(1)).await;
    assert_eq!(
        promote().await,
        1,
        "a cancelled conversation lets the next start too"
    );
    h.settle().await;
    assert_eq!(said(&h, &b).await, ["What do you need help with?"]);
}

const ROUTER: &str = r#"
kind: conversation
id: router
channels: [sms]
start: [{ any_message: true }]
steps:
  - id: why
    classify:
      intents:
        billing: { keywords: [invoice, bill], description: "a question about a bill or a payment" }
        loan: { description: "wants a loan or asks about one" }
      fallback: other
      ai:
        provider: fake
        instructions: "The writer is a customer of Acme Auto."
  - end: "{{ steps.why.output.intent }}"
"#;

/// Keywords first, with no call; then the model, whose answer counts only when it names an
/// intent (in any case, with punctuation around it); anything else, or an error, is the
/// fallback, with the reason in the step's output.
async fn a_model_classifies_what_no_keyword_does_and_only_into_the_intents(db: db::TestDb) {
    let config = ai_config("2s");
    let h = Harness::new(
        db,
        &[("herald.yaml", &config), ("workflows/router.yaml", ROUTER)],
    )
    .await;
    let intent = |id: String| {
        let h = &h;
        async move { said(h, &id).await.last().cloned().unwrap_or_default() }
    };
    let by_word = text(&h, PHONE, "where is my invoice?").await.remove(0);
    assert_eq!(intent(by_word).await, "billing");
    assert!(h.sink.requests().is_empty(), "a keyword needs no model");

    h.sink.respond_next(1, completion(" Loan. "));
    let by_model = text(&h, "+18015550101", "can I borrow for a truck")
        .await
        .remove(0);
    assert_eq!(intent(by_model.clone()).await, "loan");
    let request = &h.sink.requests()[0].json;
    let system = request["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("- billing: a question about a bill or a payment"),
        "{system}"
    );
    assert!(system.contains("- other: none of the above"), "{system}");
    assert!(system.contains("customer of Acme Auto"), "{system}");
    assert_eq!(
        request["messages"][1]["content"],
        "can I borrow for a truck"
    );
    let out = h.steps(&by_model).await[0].output.clone().unwrap();
    assert_eq!(
        (
            out["source"].as_str(),
            out["usage"]["total_tokens"].as_u64()
        ),
        (Some("ai"), Some(60))
    );

    h.sink.respond_next(1, completion("weather"));
    let unknown = text(&h, "+18015550102", "is it sunny").await.remove(0);
    assert_eq!(intent(unknown.clone()).await, "other");
    let out = h.steps(&unknown).await[0].output.clone().unwrap();
    assert_eq!(out["source"], "fallback");
    assert!(
        out["reason"].as_str().unwrap().contains("`weather`"),
        "{out}"
    );

    h.sink.respond_next(
        1,
        Reply::status(500).json(json!({"error": {"message": "overloaded"}})),
    );
    let failed = text(&h, "+18015550103", "hello there").await.remove(0);
    assert_eq!(intent(failed.clone()).await, "other");
    let out = h.steps(&failed).await[0].output.clone().unwrap();
    assert!(
        out["reason"].as_str().unwrap().contains("overloaded"),
        "{out}"
    );
}
