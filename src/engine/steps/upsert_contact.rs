//! `upsert_contact`: creates or updates the contact with an e-mail address, a phone number or
//! a channel address (a Telegram chat), links or unlinks its channel addresses, and makes it
//! the run's `contact`.

use serde_json::{Map, Value};

use super::StepCx;
use crate::definitions::model::step::UpsertContactStep;
use crate::engine::contact::{check_timezone, normalize_email, normalize_phone};
use crate::engine::interpreter::{Outcome, StepError};
use crate::engine::new_id;
use crate::store::campaigns::{Membership, MembershipKind};
use crate::store::{Contact, ContactUpsert};

pub(super) async fn execute(
    mut cx: StepCx<'_>,
    u: &UpsertContactStep,
) -> Result<Outcome, StepError> {
    let upsert = upsert(&cx, u)?;
    let (email, phone) = (upsert.email.clone(), upsert.phone.clone());
    let linked: Vec<(&str, &str)> = upsert
        .addresses
        .iter()
        .filter_map(|(c, a)| Some((c.as_str(), a.as_deref()?)))
        .collect();
    // The run's own contact (perhaps upserted earlier in this segment and not yet committed)
    // is the freshest copy; otherwise ask the store.
    let own: Option<Contact> = cx
        .run
        .ctx
        .get("contact")
        .filter(|c| !c.is_null())
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .filter(|c: &Contact| {
            (email.is_some() && c.email == email)
                || (email.is_none() && phone.is_some() && c.phone == phone)
                || (email.is_none()
                    && phone.is_none()
                    && linked
                        .iter()
                        .any(|(ch, a)| c.addresses.get(*ch).and_then(Value::as_str) == Some(*a)))
        });
    let unreadable = |e: crate::store::StoreError| StepError::Transient {
        message: format!("could not read the contact: {e}"),
        retry_after: None,
    };
    let mut existing = match own {
        Some(c) => Some(c),
        None => cx
            .host
            .store
            .find_contact(email.as_deref(), phone.as_deref())
            .await
            .map_err(unreadable)?,
    };
    // Matched by e-mail, then phone; by a channel address only when neither is given, so a chat
    // that names a new phone links to that person rather than renumbering the last one.
    if existing.is_none() && email.is_none() && phone.is_none() {
        for (channel, address) in &linked {
            existing = cx
                .host
                .store
                .contact_by_address(channel, address)
                .await
                .map_err(unreadable)?;
            if existing.is_some() {
                break;
            }
        }
    }
    let merged = upsert.apply(existing);
    let mut upsert = upsert;
    upsert.new_id = merged.id.clone();
    let value = serde_json::to_value(&merged).unwrap_or(Value::Null);
    if let Some(obj) = cx.context_mut().as_object_mut() {
        obj.insert("contact".into(), value.clone());
    }
    cx.run.contact_id = Some(merged.id.clone());
    cx.pending.contacts.push(upsert);
    Ok(Outcome::Done(value))
}

/// The step's fields, rendered and checked.
fn upsert(cx: &StepCx<'_>, u: &UpsertContactStep) -> Result<ContactUpsert, StepError> {
    let email = cx
        .render_opt(&u.email)?
        .map(|e| normalize_email(&e))
        .transpose()
        .map_err(StepError::Permanent)?;
    let region = &cx.host.registry.config.contacts.default_region;
    let phone = match cx.render_opt(&u.phone)? {
        Some(raw) => Some(
            normalize_phone(&raw, region)
                .ok_or_else(|| StepError::Permanent(format!("`{raw}` is not a phone number")))?,
        ),
        None => None,
    };
    let mut addresses = Vec::new();
    for (channel, address) in &u.addresses {
        let address = cx.render(address.as_str())?.trim().to_owned();
        if !address.is_empty() {
            addresses.push((channel.clone(), Some(address)));
        }
    }
    if email.is_none() && phone.is_none() && addresses.is_empty() {
        return Err(StepError::Permanent(
            "`upsert_contact` needs an e-mail address, a phone number or a channel address; all were empty".into(),
        ));
    }
    for channel in &u.unlink {
        addresses.push((channel.clone(), None));
    }
    let timezone = cx.render_opt(&u.timezone)?;
    if let Some(tz) = &timezone {
        check_timezone(tz).map_err(StepError::Permanent)?;
    }
    // One rule for every field: an empty or null value leaves what is stored, so a form that
    // omits a field does not erase what an earlier one recorded.
    let mut attributes = Map::new();
    for (k, v) in &u.attributes {
        let value = cx.render_json(v)?;
        let empty = match &value {
            Value::Null => true,
            Value::String(s) => s.trim().is_empty(),
            _ => false,
        };
        if !empty {
            attributes.insert(k.clone(), value);
        }
    }
    crate::engine::contact::type_attributes(
        &mut attributes,
        &cx.host.registry.config.contacts.attributes,
    )
    .map_err(StepError::Permanent)?;
    Ok(ContactUpsert {
        new_id: new_id(),
        email,
        phone,
        first_name: cx.render_opt(&u.first_name)?,
        last_name: cx.render_opt(&u.last_name)?,
        status: cx.render_opt(&u.status)?,
        timezone,
        attributes,
        addresses,
        now: cx.now,
        memberships: memberships(u),
    })
}

fn memberships(u: &UpsertContactStep) -> Vec<Membership> {
    let each = |names: &[String], kind, member| {
        names
            .iter()
            .map(move |n| Membership {
                kind,
                name: n.clone(),
                member,
            })
            .collect::<Vec<_>>()
    };
    let mut out = each(&u.lists, MembershipKind::List, true);
    out.extend(each(&u.tags, MembershipKind::Tag, true));
    out.extend(each(&u.remove_lists, MembershipKind::List, false));
    out.extend(each(&u.remove_tags, MembershipKind::Tag, false));
    out
}
