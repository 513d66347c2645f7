//! A campaign's `exit_when`, decided for one recipient before each of its messages.

use serde_json::Value;

use crate::definitions::model::campaign::ExitWhen;
use crate::store::{DynStore, Millis, StoreError};

/// What made a recipient leave, as the campaign's counts tell it: `exit_when.events` are the
/// campaign's goal (a funded loan, a booking), so leaving by one is a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Status,
    Replied,
    Converted,
}

impl Exit {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Exit::Status => "status",
            Exit::Replied => "replied",
            Exit::Converted => "converted",
        }
    }
}

/// Why the recipient `contact` (the run's contact, as JSON) leaves the campaign, if they do:
/// something in `exit_when` happened since `since`, when they were enrolled.
pub(crate) async fn reason(
    store: &DynStore,
    exit: &ExitWhen,
    contact: Option<&Value>,
    since: Millis,
) -> Result<Option<(Exit, String)>, StoreError> {
    let Some(contact) = contact.filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    let text = |k: &str| contact.get(k).and_then(Value::as_str);
    if let Some(status) = text("status")
        && exit.status.iter().any(|s| s == status)
    {
        return Ok(Some((
            Exit::Status,
            format!("their status is now `{status}`"),
        )));
    }
    let keys: Vec<&str> = ["email", "phone", "id"]
        .into_iter()
        .filter_map(text)
        .collect();
    for channel in &exit.replied {
        let name = crate::triggers::inbound::event_name(channel, None);
        let mut addresses = keys.clone();
        if let Some(a) = contact
            .get("addresses")
            .and_then(|a| a.get(channel))
            .and_then(Value::as_str)
        {
            addresses.push(a);
        }
        for key in addresses {
            if store.find_event(&name, key, since, &[]).await?.is_some() {
                return Ok(Some((
                    Exit::Replied,
                    format!("they replied on `{channel}`"),
                )));
            }
        }
    }
    for event in &exit.events {
        for key in &keys {
            if store.find_event(event, key, since, &[]).await?.is_some() {
                return Ok(Some((Exit::Converted, format!("`{event}` happened"))));
            }
        }
    }
    Ok(None)
}
