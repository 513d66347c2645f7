//! The suppression policy: whether a message may go to its recipient. A recipient who opted
//! out, unsubscribed, bounced or complained gets no message of a category their status blocks
//! (see [`MessageCategory::blocked_by`]). It is checked when a `send` runs and again just
//! before delivery, so no workflow has to remember to, and an opt-out recorded while a message
//! waits in the outbox still wins.

use serde_json::Value;

use super::contact::Address;
use super::lookups::Lookups;
use crate::channels::AddressKind;
use crate::definitions::model::step::MessageCategory;
use crate::store::{DynStore, StoreError};

/// The form an address is suppressed under: e-mail in lower case, anything else as it is.
pub(crate) fn address_key(address: &str) -> String {
    super::contact::normalize_email(address).unwrap_or_else(|_| address.trim().to_owned())
}

/// What the policy needs to know about a message's recipient.
#[derive(Debug, Default)]
pub(crate) struct Recipient {
    /// Why the message must not be sent, if it must not.
    pub blocked: Option<String>,
    /// The recipient's contact's time zone, if it has one.
    pub time_zone: Option<String>,
}

/// Whether a message of `category` to `to` on `channel` may be sent: the channel's provider
/// reported the address (a bounce, a complaint, an unsubscribe), or the recipient's contact
/// has a status that blocks the category. With it, the contact's time zone, for quiet hours.
///
/// `own` is the run's contact, used when it is the recipient (it may hold changes its segment
/// has not committed yet); otherwise the stored contact with that address counts. What
/// `known` (its batch's reads) answers is not read again.
pub(crate) async fn check(
    store: &DynStore,
    known: Option<&Lookups>,
    region: &str,
    own: Option<&Value>,
    (channel, kind): (&str, AddressKind),
    to: &str,
    category: MessageCategory,
) -> Result<Recipient, StoreError> {
    let key = address_key(to);
    // Where no batch read this address, its suppression and its contact are one read.
    let single;
    let known = match known.filter(|k| k.suppression(channel, &key).is_some()) {
        Some(k) => Some(k),
        None if kind != AddressKind::ProviderId => {
            let Address { email, phone } = Address::parse(to, region);
            single =
                Lookups::for_recipient(store, channel, &key, email.as_deref(), phone.as_deref())
                    .await?;
            Some(&single)
        }
        None => None,
    };
    let reason = match known.and_then(|k| k.suppression(channel, &key)) {
        Some(known) => known.map(str::to_owned),
        None => store.address_suppression(channel, &key).await?,
    };
    if let Some(reason) = reason
        && category.blocked_by(&reason)
    {
        return Ok(Recipient {
            blocked: Some(format!(
                "`{to}` is suppressed on channel `{channel}`: its provider reported it {reason}"
            )),
            time_zone: None,
        });
    }
    let text_of = |c: &Value, k: &str| c.get(k).and_then(Value::as_str).map(str::to_owned);
    if kind == AddressKind::ProviderId {
        // A chat id is nobody's phone number: the contact is the one that linked it.
        let linked = |c: &Value| c["addresses"].get(channel).and_then(Value::as_str) == Some(to);
        let (status, time_zone) = match own.filter(|c| linked(c)) {
            Some(c) => (text_of(c, "status"), text_of(c, "timezone")),
            None => store
                .contact_by_address(channel, to)
                .await?
                .map(|c| (c.status, c.timezone))
                .unwrap_or_default(),
        };
        return Ok(Recipient {
            blocked: status
                .filter(|s| category.blocked_by(s))
                .map(|s| format!("the recipient's status is `{s}`")),
            time_zone,
        });
    }
    let Address { email, phone } = Address::parse(to, region);
    let matches = |c: &Value| {
        email.as_deref().is_some_and(|e| {
            c.get("email")
                .and_then(Value::as_str)
                .is_some_and(|ce| ce.eq_ignore_ascii_case(e))
        }) || phone
            .as_deref()
            .is_some_and(|p| c.get("phone").and_then(Value::as_str) == Some(p))
    };
    let (status, time_zone) = match own.filter(|c| matches(c)) {
        Some(c) => (text_of(c, "status"), text_of(c, "timezone")),
        None if email.is_none() && phone.is_none() => return Ok(Recipient::default()),
        None => {
            let found = match known.and_then(|k| k.find_contact(email.as_deref(), phone.as_deref()))
            {
                Some(c) => c.cloned(),
                None => {
                    store
                        .find_contact(email.as_deref(), phone.as_deref())
                        .await?
                }
            };
            found.map(|c| (c.status, c.timezone)).unwrap_or_default()
        }
    };
    Ok(Recipient {
        blocked: status
            .filter(|s| category.blocked_by(s))
            .map(|s| format!("the recipient's status is `{s}`")),
        time_zone,
    })
}
