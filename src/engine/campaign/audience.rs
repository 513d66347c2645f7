//! A campaign's `audience`, as the store selects it at one moment: relative times such as
//! `older_than: 30d` become instants on the engine's clock (the virtual one under
//! `herald test`), so a broadcast and its test select the same contacts.

use crate::definitions::campaign::Campaign;
use crate::definitions::model::audience::{AttributeCondition, DateTest, parse_date};
use crate::definitions::model::campaign::Schedule;
use crate::store::Millis;
use crate::store::campaigns::{AttributeMatch, AudienceFilter};

pub(crate) fn filter(c: &Campaign, now: Millis) -> AudienceFilter {
    let a = &c.audience;
    let mut attributes = Vec::new();
    for (name, condition) in &a.attributes {
        let mut add = |m| attributes.push((name.clone(), m));
        match condition {
            AttributeCondition::Equals(v) => add(AttributeMatch::Eq(v.clone())),
            AttributeCondition::Test(t) => {
                if let Some(v) = &t.eq {
                    add(AttributeMatch::Eq(v.clone()));
                }
                if let Some(v) = &t.ne {
                    add(AttributeMatch::Ne(v.clone()));
                }
                if let Some(vs) = &t.in_ {
                    add(AttributeMatch::In(vs.clone()));
                }
                if let Some(vs) = &t.not_in {
                    add(AttributeMatch::NotIn(vs.clone()));
                }
                let numbers = [
                    (t.gt, AttributeMatch::Gt as fn(f64) -> AttributeMatch),
                    (t.gte, AttributeMatch::Gte),
                    (t.lt, AttributeMatch::Lt),
                    (t.lte, AttributeMatch::Lte),
                ];
                for (n, m) in numbers {
                    if let Some(n) = n {
                        add(m(n));
                    }
                }
                if let Some(e) = t.exists {
                    add(AttributeMatch::Exists(e));
                }
                for m in dates(&t.date(), now) {
                    add(m);
                }
            }
        }
    }
    AudienceFilter {
        lists: a.lists.clone(),
        tags: a.tags.clone(),
        without_tags: a.without_tags.clone(),
        status: a.status.clone(),
        attributes,
        created: a
            .created
            .as_ref()
            .map(|d| dates(d, now))
            .unwrap_or_default(),
        once_ever: matches!(c.schedule, Schedule::Cron(_)) && !c.reenrol,
    }
}

/// A date test as instants. The texts were checked when the campaign was read; one that
/// would not parse here selects nobody rather than being dropped, which would select more.
fn dates(d: &DateTest, now: Millis) -> Vec<AttributeMatch> {
    let mut out = Vec::new();
    let at = |text: &str| parse_date(text).unwrap_or(i64::MIN);
    if let Some(b) = &d.before {
        out.push(AttributeMatch::Before(at(b)));
    }
    if let Some(a) = &d.after {
        let ms = parse_date(a).unwrap_or(i64::MAX);
        out.push(AttributeMatch::After(ms));
    }
    if let Some(o) = d.older_than {
        out.push(AttributeMatch::Before(
            now.saturating_sub(o.as_millis_i64()),
        ));
    }
    if let Some(w) = d.within {
        out.push(AttributeMatch::After(now.saturating_sub(w.as_millis_i64())));
        out.push(AttributeMatch::Before(now.saturating_add(1)));
    }
    out
}
