//! What the store keeps about campaigns: each one's state, and who is enrolled.

use serde::Serialize;

use super::Millis;

/// Which contacts a campaign enrolls, as the store selects them: every condition given holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AudienceFilter {
    /// On at least one of these lists.
    pub lists: Vec<String>,
    /// With every one of these tags.
    pub tags: Vec<String>,
    /// With none of these tags.
    pub without_tags: Vec<String>,
    /// With one of these statuses.
    pub status: Vec<String>,
    /// Tests on attributes, every one of which holds; times already resolved against the
    /// clock of the enrolment.
    pub attributes: Vec<(String, AttributeMatch)>,
    /// Tests on when the contact was stored (only `Before` and `After`).
    pub created: Vec<AttributeMatch>,
    /// Leaves out contacts enrolled in any occurrence of the campaign, not only this one: a
    /// recurring campaign that does not `reenrol`.
    pub once_ever: bool,
}

/// One test on one attribute, as the store runs it.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeMatch {
    Eq(Scalar),
    /// Not equal; a contact without the attribute matches.
    Ne(Scalar),
    In(Vec<Scalar>),
    /// Equal to none; a contact without the attribute matches.
    NotIn(Vec<Scalar>),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
    Exists(bool),
    /// A date before this instant.
    Before(Millis),
    /// A date at or after this instant.
    After(Millis),
}

pub use crate::definitions::model::audience::Scalar;

/// A campaign's stored state. A campaign without a row is scheduled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CampaignRow {
    pub id: String,
    pub state: String,
    /// When its audience was enrolled in full: a broadcast's, or a recurring campaign's
    /// `occurrence`'s.
    pub enrolled_at: Option<Millis>,
    /// A recurring campaign's occurrence being enrolled, or last enrolled.
    pub occurrence: Option<String>,
    pub updated_at: Millis,
}

/// How far a campaign has got: recipients, their runs, and its messages by step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CampaignCounts {
    pub enrolled: i64,
    /// Recipients whose runs have finished (completed, failed or cancelled).
    pub finished: i64,
    /// Recipients still on their way.
    pub active: i64,
    /// Recipients who left by `exit_when`: all of them, and those who left because they
    /// replied, or because an `exit_when.events` event (the campaign's goal) happened.
    pub exited: i64,
    pub replied: i64,
    pub converted: i64,
    pub steps: Vec<StepCounts>,
}

/// The messages of one step of a campaign, by what became of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StepCounts {
    pub step: String,
    pub pending: i64,
    pub sent: i64,
    pub failed: i64,
    pub delivered: i64,
    pub bounced: i64,
    pub complained: i64,
    pub unsubscribed: i64,
}

/// A contact's place on a list or a tag, to add (`member`) or remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub kind: MembershipKind,
    pub name: String,
    pub member: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipKind {
    List,
    Tag,
}
