//! Reads made once for a batch. A worker claims runs, and the dispatcher messages, dozens at a
//! time; each of them would otherwise read its contact, its recipient's suppressions and its
//! campaign's state on its own, and on SQLite every statement is a hop to the connection's
//! thread and back, which costs more than the statement. [`Lookups`] reads them for the whole
//! batch in a few set-based statements.
//!
//! An answer is a snapshot, used only for what was looked up and only while fresh
//! ([`FRESH`]): a run that goes on for longer (a slow `http` step) reads from the store again,
//! as does anything the batch did not look up. A failed batch read is not an error: every
//! item then reads for itself, and reports what goes wrong there.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::contact::Address;
use super::registry::Registry;
use super::suppression::address_key;
use crate::store::campaigns::CampaignRow;
use crate::store::{Contact, DynStore, OutboxRecord, RunRecord, StoreError};

/// How long a batch's reads stand for the store. A claimed run or message is executed at
/// once, so this is only reached by one that waits on something slow; an opt-out recorded
/// meanwhile is then read, not missed.
const FRESH: Duration = Duration::from_secs(1);

/// What a batch read, and what it found.
#[derive(Debug)]
pub(crate) struct Lookups {
    taken: Instant,
    /// By id.
    contacts: HashMap<String, Contact>,
    /// Every e-mail and phone looked up, found or not, and the contacts found by them.
    emails: HashSet<String>,
    phones: HashSet<String>,
    by_email: HashMap<String, Contact>,
    by_phone: HashMap<String, Contact>,
    /// Suppressions were looked up for every pair of these channels and addresses.
    channels: HashSet<String>,
    addresses: HashSet<String>,
    suppressed: HashMap<(String, String), String>,
    /// Campaign states by id (`None`: no row, which is scheduled).
    campaigns: HashMap<String, Option<CampaignRow>>,
}

impl Lookups {
    fn empty() -> Lookups {
        Lookups {
            taken: Instant::now(),
            contacts: HashMap::new(),
            emails: HashSet::new(),
            phones: HashSet::new(),
            by_email: HashMap::new(),
            by_phone: HashMap::new(),
            channels: HashSet::new(),
            addresses: HashSet::new(),
            suppressed: HashMap::new(),
            campaigns: HashMap::new(),
        }
    }

    fn fresh(&self) -> bool {
        self.taken.elapsed() < FRESH
    }

    /// The contact with this id, if the batch read it (a contact that does not exist is not
    /// known: the store says so).
    pub(crate) fn contact(&self, id: &str) -> Option<&Contact> {
        self.contacts.get(id).filter(|_| self.fresh())
    }

    /// Why `address` (as [`address_key`] gives it) is suppressed on `channel`: `Some(None)`
    /// when the batch knows it is not, `None` when the batch did not look.
    pub(crate) fn suppression(&self, channel: &str, address: &str) -> Option<Option<&str>> {
        if !self.fresh() || !self.channels.contains(channel) || !self.addresses.contains(address) {
            return None;
        }
        Some(
            self.suppressed
                .get(&(channel.to_owned(), address.to_owned()))
                .map(String::as_str),
        )
    }

    /// As [`crate::store::Store::find_contact`]: the contact with this e-mail, else the one
    /// with this phone. `None` when the batch did not look up every one given.
    pub(crate) fn find_contact(
        &self,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Option<Option<&Contact>> {
        let known = self.fresh()
            && email.is_none_or(|e| self.emails.contains(e))
            && phone.is_none_or(|p| self.phones.contains(p));
        known.then(|| {
            email
                .and_then(|e| self.by_email.get(e))
                .or_else(|| phone.and_then(|p| self.by_phone.get(p)))
        })
    }

    /// The campaign's state, if the batch read it.
    pub(crate) fn campaign(&self, id: &str) -> Option<Option<&CampaignRow>> {
        self.campaigns
            .get(id)
            .filter(|_| self.fresh())
            .map(Option::as_ref)
    }

    /// What a batch of claimed runs reads: their contacts, the suppressions of those
    /// contacts' addresses on every channel, and the states of their campaigns.
    pub(crate) async fn for_runs(
        store: &DynStore,
        registry: &Registry,
        runs: &[RunRecord],
    ) -> Option<Lookups> {
        usable(Self::read_for_runs(store, registry, runs).await, "run")
    }

    async fn read_for_runs(
        store: &DynStore,
        registry: &Registry,
        runs: &[RunRecord],
    ) -> Result<Lookups, StoreError> {
        let mut l = Lookups::empty();
        let ids: Vec<String> = runs
            .iter()
            .filter_map(|r| r.contact_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut addresses = HashSet::new();
        for c in store.contacts(&ids).await? {
            addresses.extend(c.email.as_deref().map(address_key));
            addresses.extend(c.phone.as_deref().map(address_key));
            addresses.extend(
                c.addresses
                    .values()
                    .filter_map(|a| a.as_str())
                    .map(address_key),
            );
            l.contacts.insert(c.id.clone(), c);
        }
        l.read_suppressions(store, registry, addresses).await?;
        let campaigns: HashSet<&str> = runs
            .iter()
            .map(|r| r.workflow_id.as_str())
            .filter(|w| {
                registry
                    .workflows
                    .get(*w)
                    .is_some_and(|w| w.campaign.is_some())
            })
            .collect();
        for id in campaigns {
            l.campaigns.insert(id.to_owned(), store.campaign(id).await?);
        }
        Ok(l)
    }

    /// What one message's check reads when no batch read for it: the suppression of its
    /// `address` on `channel` and the contact with its e-mail or phone, in one statement.
    pub(crate) async fn for_recipient(
        store: &DynStore,
        channel: &str,
        address: &str,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Result<Lookups, StoreError> {
        let (reason, contact) = store.recipient(channel, address, email, phone).await?;
        let mut l = Lookups::empty();
        l.channels.insert(channel.to_owned());
        l.addresses.insert(address.to_owned());
        if let Some(reason) = reason {
            l.suppressed
                .insert((channel.to_owned(), address.to_owned()), reason);
        }
        l.emails.extend(email.map(str::to_owned));
        l.phones.extend(phone.map(str::to_owned));
        if let Some(c) = contact {
            match (email, phone) {
                (Some(e), _) if c.email.as_deref() == Some(e) => {
                    l.by_email.insert(e.to_owned(), c);
                }
                (_, Some(p)) => {
                    l.by_phone.insert(p.to_owned(), c);
                }
                _ => {}
            }
        }
        Ok(l)
    }

    /// What a batch of claimed messages reads: the suppressions of their recipients, and the
    /// contacts with those addresses.
    pub(crate) async fn for_messages(
        store: &DynStore,
        registry: &Registry,
        messages: &[OutboxRecord],
    ) -> Option<Lookups> {
        usable(
            Self::read_for_messages(store, registry, messages).await,
            "message",
        )
    }

    async fn read_for_messages(
        store: &DynStore,
        registry: &Registry,
        messages: &[OutboxRecord],
    ) -> Result<Lookups, StoreError> {
        let mut l = Lookups::empty();
        let region = &registry.config.contacts.default_region;
        let mut addresses = HashSet::new();
        for m in messages {
            addresses.insert(address_key(&m.recipient));
            let Address { email, phone } = Address::parse(&m.recipient, region);
            l.emails.extend(email);
            l.phones.extend(phone);
        }
        l.read_suppressions(store, registry, addresses).await?;
        let emails: Vec<String> = l.emails.iter().cloned().collect();
        let phones: Vec<String> = l.phones.iter().cloned().collect();
        for c in store.find_contacts(&emails, &phones).await? {
            if let Some(e) = c.email.as_ref().filter(|e| l.emails.contains(*e)) {
                l.by_email.insert(e.clone(), c.clone());
            }
            if let Some(p) = c.phone.as_ref().filter(|p| l.phones.contains(*p)) {
                l.by_phone.insert(p.clone(), c);
            }
        }
        Ok(l)
    }

    /// Reads the suppressions of `addresses` on every configured channel.
    async fn read_suppressions(
        &mut self,
        store: &DynStore,
        registry: &Registry,
        addresses: HashSet<String>,
    ) -> Result<(), StoreError> {
        let channels: Vec<String> = registry.channels.keys().cloned().collect();
        let list: Vec<String> = addresses.iter().cloned().collect();
        for (channel, address, reason) in store.address_suppressions(&channels, &list).await? {
            self.suppressed.insert((channel, address), reason);
        }
        self.channels = channels.into_iter().collect();
        self.addresses = addresses;
        Ok(())
    }
}

/// A batch's reads, or none when they failed: each `item` of the batch then reads its own,
/// and reports what goes wrong there.
fn usable(read: Result<Lookups, StoreError>, item: &str) -> Option<Lookups> {
    read.inspect_err(|e| {
        tracing::debug!(error = %e, "could not read a batch together; each {item} reads its own")
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(id: &str, email: &str) -> Contact {
        Contact {
            id: id.into(),
            email: Some(email.into()),
            phone: None,
            first_name: None,
            last_name: None,
            status: Some("lead".into()),
            timezone: None,
            attributes: Default::default(),
            addresses: Default::default(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn batch() -> Lookups {
        let mut l = Lookups::empty();
        l.contacts
            .insert("c1".into(), contact("c1", "a@example.com"));
        l.emails.insert("a@example.com".into());
        l.emails.insert("b@example.com".into());
        l.by_email
            .insert("a@example.com".into(), contact("c1", "a@example.com"));
        l.channels.insert("email".into());
        l.addresses.insert("a@example.com".into());
        l.addresses.insert("b@example.com".into());
        l.suppressed
            .insert(("email".into(), "b@example.com".into()), "bounced".into());
        l
    }

    #[test]
    fn answers_only_what_it_looked_up() {
        let l = batch();
        assert_eq!(l.contact("c1").map(|c| c.id.as_str()), Some("c1"));
        assert!(l.contact("c2").is_none(), "not read: the store answers");
        assert_eq!(l.suppression("email", "a@example.com"), Some(None));
        assert_eq!(
            l.suppression("email", "b@example.com"),
            Some(Some("bounced"))
        );
        assert_eq!(
            l.suppression("sms", "a@example.com"),
            None,
            "channel not looked up"
        );
        assert_eq!(
            l.suppression("email", "c@example.com"),
            None,
            "address not looked up"
        );
        assert_eq!(
            l.find_contact(Some("a@example.com"), None)
                .map(|c| c.map(|c| c.id.clone())),
            Some(Some("c1".into()))
        );
        assert!(matches!(
            l.find_contact(Some("b@example.com"), None),
            Some(None)
        ));
        assert!(
            l.find_contact(Some("b@example.com"), Some("+15550000000"))
                .is_none(),
            "a phone not looked up: the store answers"
        );
        assert_eq!(l.campaign("spring"), None);
    }

    #[test]
    fn a_stale_batch_answers_nothing() {
        let mut l = batch();
        l.campaigns.insert("spring".into(), None);
        assert_eq!(l.campaign("spring"), Some(None));
        let Some(past) = Instant::now().checked_sub(FRESH + Duration::from_millis(1)) else {
            return;
        };
        l.taken = past;
        assert!(l.contact("c1").is_none());
        assert_eq!(l.suppression("email", "b@example.com"), None);
        assert!(l.find_contact(Some("a@example.com"), None).is_none());
        assert_eq!(l.campaign("spring"), None);
    }
}
