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
        p.entry = p.add_list(steps, None);
        p
    }

    pub fn node(&self, id: &str) -> Option<(usize, &Node)> {
        self.by_id.get(id).map(|&i| (i, &self.nodes[i]))
    }

    pub fn branch(&self, node: &Node, key: &str) -> Option<usize> {
        node.branches
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, first)| *first)
    }

    fn add_list(&mut self, steps: &[Step], cont: Option<usize>) -> Option<usize> {
        // Siblings first, so each knows the index of the one after it.
        let idxs: Vec<usize> = steps
            .iter()
            .map(|s| {
                self.nodes.push(Node {
                    step: shallow(s),
                    next: None,
                    branches: Vec::new(),
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
            let branches = match &s.action {
                Action::If { then, else_, .. } => vec![
                    ("then".to_owned(), self.add_list(then, next)),
                    ("else".to_owned(), self.add_list(else_, next)),
                ],
                Action::Switch { cases, default, .. } => {
                    let mut b: Vec<(String, Option<usize>)> = cases
                        .iter()
                        .map(|(k, v)| (format!("case:{k}"), self.add_list(v, next)))
                        .collect();
                    b.push(("default".to_owned(), self.add_list(default, next)));
                    b
                }
                // The end of the body goes back to the loop, which moves to the next item.
                Action::ForEach { steps: body, .. } => {
                    vec![("body".to_owned(), self.add_list(body, Some(me)))]
                }
                _ => Vec::new(),
            };
            self.nodes[me].branches = branches;
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
        other => other.clone(),
    };
    Step {
        id: s.id.clone(),
        explicit_id: s.explicit_id,
        pointer: s.pointer.clone(),
        retry: s.retry.clone(),
        timeout: s.timeout,
        action,
    }
}
