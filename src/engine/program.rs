//! A workflow's step tree laid out for the interpreter: every step is a node with the node that
//! runs after it, so a run's position is just a step id (plus loop frames). Step ids, not
//! positions, are what a run stores, which is what lets a waiting run move to a new version of
//! its workflow when that version still has the step.

use std::collections::HashMap;

use crate::definitions::model::step::{Action, Step};

#[derive(Debug, Clone)]
pub struct Node {
    pub step: Step,
    /// What runs after this step completes: the next sibling, else the enclosing branch's
    /// continuation, else (at the end of a loop body) the loop's own node.
    pub next: Option<usize>,
    /// The first node of each branch: `then`, `else`, `case:<key>`, `default`, `body`.
    pub branches: Vec<(String, Option<usize>)>,
    /// The compound step (`if`, `switch`, `for_each`, `try`) this step is nested in. A step
    /// of an `on_error` handler has its owner's parent: a failure inside a handler goes to
    /// the handler around it, not back to the same one.
    pub parent: Option<usize>,
    /// `Some` when the step has `on_error`: the handler's first node, or `None` for an empty
    /// handler, which carries on at `next`.
    pub handler: Option<Option<usize>>,
    /// The step id as a shared string, for metric labels without an allocation per use.
    pub metric_step: std::sync::Arc<str>,
}

#[derive(Debug, Clone, Default)]
pub struct Program {
    pub nodes: Vec<Node>,
    pub by_id: HashMap<String, usize>,
    pub entry: Option<usize>,
}

impl Program {
    pub fn compile(steps: &[Step]) -> Program {
        let mut p = Program::default();
        p.entry = p.add_list(steps, None, None);
        p
    }

    /// The node whose `on_error` handles a failure of node `failed`: the node itself or the
    /// nearest enclosing one with a handler.
    pub(crate) fn handler_for(&self, failed: usize) -> Option<usize> {
        let mut at = Some(failed);
        while let Some(i) = at {
            if self.nodes[i].handler.is_some() {
                return Some(i);
            }
            at = self.nodes[i].parent;
        }
        None
    }

    /// The nodes a failure at `failed` leaves on its way to the handler at `handler`: both of
    /// them and every node in between. Loops among them are exited.
    pub(crate) fn unwound(&self, failed: usize, handler: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = Some(failed);
        while let Some(i) = at {
            out.push(i);
            if i == handler {
                break;
            }
            at = self.nodes[i].parent;
        }
        out
    }

    pub(crate) fn node(&self, id: &str) -> Option<(usize, &Node)> {
        self.by_id.get(id).map(|&i| (i, &self.nodes[i]))
    }

    pub fn branch(&self, node: &Node, key: &str) -> Option<usize> {
        node.branches
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, first)| *first)
    }

    fn add_list(
        &mut self,
        steps: &[Step],
        cont: Option<usize>,
        parent: Option<usize>,
    ) -> Option<usize> {
        // Siblings first, so each knows the index of the one after it.
        let idxs: Vec<usize> = steps
            .iter()
            .map(|s| {
                self.nodes.push(Node {
                    step: shallow(s),
                    next: None,
                    branches: Vec::new(),
                    parent,
                    handler: None,
                    metric_step: s.id.as_str().into(),
                });
                let i = self.nodes.len() - 1;
                self.by_id.insert(s.id.clone(), i);
                i
            })
            .collect();
        for (n, s) in steps.iter().enumerate() {
            let me = idxs[n];
            let next = idxs.get(n + 1).copied().or(cont);
            self.nodes[me].next = next;
            let inside = Some(me);
            let branches = match &s.action {
                Action::If { then, else_, .. } => vec![
                    ("then".to_owned(), self.add_list(then, next, inside)),
                    ("else".to_owned(), self.add_list(else_, next, inside)),
                ],
                Action::Switch { cases, default, .. } => {
                    let mut b: Vec<(String, Option<usize>)> = cases
                        .iter()
                        .map(|(k, v)| (format!("case:{k}"), self.add_list(v, next, inside)))
                        .collect();
                    b.push(("default".to_owned(), self.add_list(default, next, inside)));
                    b
                }
                // The end of the body goes back to the loop, which moves to the next item.
                Action::ForEach { steps: body, .. } => {
                    vec![("body".to_owned(), self.add_list(body, Some(me), inside))]
                }
                Action::Try { steps: body } => {
                    vec![("body".to_owned(), self.add_list(body, next, inside))]
                }
                _ => Vec::new(),
            };
            self.nodes[me].branches = branches;
            // After a handler, the run carries on after the step that failed.
            if let Some(h) = &s.on_error {
                let first = self.add_list(h, next, parent);
                self.nodes[me].handler = Some(first);
            }
        }
        idxs.first().copied()
    }
}

/// The step without its nested steps, which live in their own nodes.
fn shallow(s: &Step) -> Step {
    let action = match &s.action {
        Action::If { condition, .. } => Action::If {
            condition: condition.clone(),
            then: Vec::new(),
            else_: Vec::new(),
        },
        Action::Switch { on, cases, .. } => Action::Switch {
            on: on.clone(),
            cases: cases.keys().map(|k| (k.clone(), Vec::new())).collect(),
            default: Vec::new(),
        },
        Action::ForEach { items, as_, .. } => Action::ForEach {
            items: items.clone(),
            as_: as_.clone(),
            steps: Vec::new(),
        },
        Action::Try { .. } => Action::Try { steps: Vec::new() },
        other => other.clone(),
    };
    Step {
        id: s.id.clone(),
        explicit_id: s.explicit_id,
        pointer: s.pointer.clone(),
        retry: s.retry.clone(),
        timeout: s.timeout,
        action,
        on_error: s.on_error.as_ref().map(|_| Vec::new()),
    }
}
