//! [`Store`] and [`Admin`], implemented once for every [`Backend`]: each method is the shared
//! operation of its area, or (claiming a segment's commit aside) the backend's own.

use async_trait::async_trait;

use super::{
    Backend, campaigns, commit, contacts, cron, definitions, events, outbox, retention, runs,
    suppressions,
};
use crate::store::admin::{
    Admin, ContactFilter, ContactPatch, MessageChange, OutboxFilter, Purged, RunSelection,
    Suppression,
};
use crate::store::campaigns::{AudienceFilter, CampaignCounts, CampaignRow};
use crate::store::{
    Commit, CommitOutcome, Contact, ContactUpsert, CronFire, DefinitionVersion, DeliveryOutcome,
    EventRecord, Millis, NewEvent, NewOutbox, NewRun, OutboxRecord, OutboxStatus, Result,
    RunFilter, RunRecord, RunStatus, SentMessages, StepLogEntry, Store,
};

#[async_trait]
impl<B: Backend> Store for B {
    fn backend(&self) -> &'static str {
        B::NAME
    }
    async fn ping(&self) -> Result<()> {
        definitions::ping(self).await
    }

    async fn save_definition(&self, v: &DefinitionVersion) -> Result<()> {
        definitions::save(self, v).await
    }
    async fn definition(&self, hash: &str) -> Result<Option<DefinitionVersion>> {
        definitions::get(self, hash).await
    }

    async fn commit(&self, c: Commit) -> Result<CommitOutcome> {
        Backend::commit(self, c).await
    }
    async fn run(&self, id: &str) -> Result<Option<RunRecord>> {
        runs::get(self, id).await
    }
    async fn run_by_idempotency_key(&self, w: &str, key: &str) -> Result<Option<RunRecord>> {
        runs::by_idempotency_key(self, w, key).await
    }
    async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunRecord>> {
        runs::list(self, f).await
    }
    async fn step_log(&self, run_id: &str) -> Result<Vec<StepLogEntry>> {
        runs::step_log(self, run_id).await
    }
    async fn open_conversation(&self, wf: &str, key: &str) -> Result<Option<RunRecord>> {
        runs::open_conversation(self, wf, key).await
    }
    async fn claim_runs(&self, o: &str, now: Millis, lease: i64, n: i64) -> Result<Vec<RunRecord>> {
        runs::claim(self, o, now, lease, n).await
    }
    async fn renew_leases(&self, o: &str, ids: &[String], until: Millis) -> Result<Vec<String>> {
        runs::renew_leases(self, o, ids, until).await
    }
    async fn release_runs(&self, owner: &str, now: Millis) -> Result<u64> {
        runs::release(self, owner, now).await
    }
    async fn next_due_at(&self) -> Result<Option<Millis>> {
        runs::next_due_at(self).await
    }
    async fn cancel_run(&self, id: &str, now: Millis) -> Result<bool> {
        runs::cancel(self, id, now).await
    }
    async fn retry_run(&self, id: &str, now: Millis) -> Result<bool> {
        runs::retry(self, id, now).await
    }
    async fn count_runs(&self) -> Result<Vec<(RunStatus, i64)>> {
        runs::count(self).await
    }

    async fn insert_events(
        &self,
        e: &[NewEvent],
        r: &[NewRun],
        c: &[ContactUpsert],
        o: &[NewOutbox],
    ) -> Result<Vec<Contact>> {
        commit::insert_events(self, e, r, c, o).await
    }
    async fn wake_waiting(&self, name: &str, key: &str, now: Millis) -> Result<u64> {
        events::wake_waiting(self, name, key, now).await
    }
    async fn find_event(
        &self,
        name: &str,
        key: &str,
        since: Millis,
        exclude: &[String],
    ) -> Result<Option<EventRecord>> {
        events::find(self, name, key, since, exclude).await
    }

    async fn contact(&self, id: &str) -> Result<Option<Contact>> {
        contacts::get(self, id).await
    }
    async fn contact_by_address(&self, ch: &str, address: &str) -> Result<Option<Contact>> {
        contacts::by_address(self, ch, address).await
    }
    async fn find_contact(&self, e: Option<&str>, p: Option<&str>) -> Result<Option<Contact>> {
        contacts::find(self, e, p).await
    }
    async fn contacts(&self, ids: &[String]) -> Result<Vec<Contact>> {
        contacts::get_many(self, ids).await
    }
    async fn find_contacts(&self, emails: &[String], phones: &[String]) -> Result<Vec<Contact>> {
        contacts::find_many(self, emails, phones).await
    }
    async fn recipient(
        &self,
        ch: &str,
        address: &str,
        e: Option<&str>,
        p: Option<&str>,
    ) -> Result<(Option<String>, Option<Contact>)> {
        contacts::recipient(self, ch, address, e, p).await
    }

    async fn claim_outbox(
        &self,
        o: &str,
        now: Millis,
        lease: i64,
        n: i64,
    ) -> Result<Vec<OutboxRecord>> {
        outbox::claim(self, o, now, lease, n).await
    }
    async fn finish_delivery(
        &self,
        id: &str,
        owner: &str,
        outcome: DeliveryOutcome,
        now: Millis,
    ) -> Result<bool> {
        let held =
            outbox::finish_deliveries(self, owner, vec![(id.to_owned(), outcome)], now).await?;
        Ok(held.first().copied().unwrap_or(false))
    }
    async fn finish_deliveries(
        &self,
        owner: &str,
        outcomes: Vec<(String, DeliveryOutcome)>,
        now: Millis,
    ) -> Result<Vec<bool>> {
        outbox::finish_deliveries(self, owner, outcomes, now).await
    }
    async fn record_delivery(
        &self,
        channel: &str,
        provider_id: &str,
        delivery: &str,
        error: Option<&str>,
        now: Millis,
    ) -> Result<Option<OutboxRecord>> {
        outbox::record_delivery(self, channel, provider_id, delivery, error, now).await
    }
    async fn suppress_address(
        &self,
        channel: &str,
        address: &str,
        reason: &str,
        detail: Option<&str>,
        now: Millis,
    ) -> Result<()> {
        suppressions::suppress(self, channel, address, reason, detail, now).await
    }
    async fn address_suppression(&self, channel: &str, address: &str) -> Result<Option<String>> {
        suppressions::reason(self, channel, address).await
    }
    async fn address_suppressions(
        &self,
        channels: &[String],
        addresses: &[String],
    ) -> Result<Vec<(String, String, String)>> {
        suppressions::of(self, channels, addresses).await
    }
    async fn count_recent_messages(
        &self,
        ch: &str,
        to: &str,
        category: &str,
        since: Millis,
    ) -> Result<i64> {
        outbox::count_recent(self, ch, to, category, since).await
    }
    async fn outbox_for_run(&self, run_id: &str) -> Result<Vec<OutboxRecord>> {
        outbox::for_run(self, run_id).await
    }
    async fn sent_messages(&self, query: &SentMessages) -> Result<Vec<OutboxRecord>> {
        outbox::sent(self, query).await
    }
    async fn count_outbox(&self) -> Result<Vec<(OutboxStatus, i64)>> {
        outbox::count(self).await
    }
    async fn next_outbox_at(&self) -> Result<Option<Millis>> {
        outbox::next_at(self).await
    }

    async fn cron_checked_until(&self, w: &str, key: &str) -> Result<Option<Millis>> {
        cron::checked_until(self, w, key).await
    }
    async fn set_cron_checked_until(&self, w: &str, key: &str, until: Millis) -> Result<()> {
        cron::set_checked_until(self, w, key, until).await
    }
    async fn record_cron_fire(&self, fire: &CronFire, run: Option<&NewRun>) -> Result<bool> {
        cron::record_fire(self, fire, run).await
    }
    async fn cron_run_active(&self, w: &str, key: &str) -> Result<bool> {
        cron::run_active(self, w, key).await
    }
    async fn cron_fires(&self, w: &str, limit: i64) -> Result<Vec<CronFire>> {
        cron::fires(self, w, limit).await
    }

    async fn campaign_candidates(
        &self,
        campaign: &str,
        occurrence: &str,
        audience: &AudienceFilter,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>> {
        campaigns::candidates(self, campaign, occurrence, audience, after, limit).await
    }
    async fn enrol_campaign(
        &self,
        campaign: &str,
        occurrence: &str,
        recipients: &[(String, NewRun)],
        now: Millis,
    ) -> Result<u64> {
        campaigns::enrol(self, campaign, occurrence, recipients, now).await
    }
    async fn campaign(&self, id: &str) -> Result<Option<CampaignRow>> {
        campaigns::get(self, id).await
    }
    async fn set_campaign_state(
        &self,
        id: &str,
        state: &str,
        enrolled_at: Option<Millis>,
        now: Millis,
    ) -> Result<()> {
        campaigns::set_state(self, id, state, enrolled_at, now).await
    }
    async fn set_campaign_occurrence(
        &self,
        id: &str,
        occurrence: &str,
        enrolled_at: Option<Millis>,
        now: Millis,
    ) -> Result<()> {
        campaigns::set_occurrence(self, id, occurrence, enrolled_at, now).await
    }
    async fn latest_cron_fire(&self, workflow_id: &str) -> Result<Option<Millis>> {
        cron::latest_fired(self, workflow_id).await
    }
    async fn queued_conversations(
        &self,
        key: Option<&str>,
        limit: i64,
    ) -> Result<Vec<crate::store::QueuedConversation>> {
        runs::queued_conversations(self, key, limit).await
    }
    async fn promote_queued_conversation(&self, run_id: &str, now: Millis) -> Result<bool> {
        runs::promote_queued(self, run_id, now).await
    }
    async fn campaign_counts(&self, id: &str) -> Result<CampaignCounts> {
        campaigns::counts(self, id).await
    }
    async fn alert_events(&self, name: &str, from: Millis, to: Millis) -> Result<Vec<EventRecord>> {
        super::alerts::events_between(self, name, from, to).await
    }
    async fn alert_instances(&self, alert_id: &str) -> Result<Vec<crate::store::AlertInstance>> {
        super::alerts::instances(self, alert_id).await
    }
    async fn record_alert_tick(
        &self,
        alert_id: &str,
        tick: Millis,
        states: &[crate::store::AlertInstance],
    ) -> Result<bool> {
        super::alerts::record_tick(self, alert_id, tick, states).await
    }
    async fn firing_alert_instances(&self) -> Result<Vec<crate::store::AlertInstance>> {
        super::alerts::firing(self).await
    }
    async fn alert_notifications(&self) -> Result<Vec<crate::store::alerting::NotificationLog>> {
        super::alerts::notifications(self).await
    }
    async fn record_alert_notification(
        &self,
        log: &crate::store::alerting::NotificationLog,
        read_seq: Option<i64>,
        messages: &[NewOutbox],
    ) -> Result<bool> {
        super::alerts::record_notification(self, log, read_seq, messages).await
    }
    async fn add_silence(&self, silence: &crate::store::alerting::SilenceRow) -> Result<()> {
        super::alerts::add_silence(self, silence).await
    }
    async fn silences(
        &self,
        active_at: Option<Millis>,
    ) -> Result<Vec<crate::store::alerting::SilenceRow>> {
        super::alerts::silences(self, active_at).await
    }
    async fn expire_silence(&self, id: &str, now: Millis) -> Result<bool> {
        super::alerts::expire_silence(self, id, now).await
    }
    async fn alert_metric(
        &self,
        query: &crate::store::alerting::MetricQuery,
    ) -> Result<Vec<(Option<String>, f64)>> {
        super::metrics::metric(self, query).await
    }
    async fn alert_step_durations(
        &self,
        query: &crate::store::alerting::MetricQuery,
        limit: i64,
    ) -> Result<Vec<(Option<String>, i64)>> {
        super::metrics::step_durations(self, query, limit).await
    }
    async fn add_webhook_responses(
        &self,
        counts: &[crate::store::alerting::WebhookCount],
    ) -> Result<()> {
        super::metrics::add_webhook_responses(self, counts).await
    }
}

#[async_trait]
impl<B: Backend> Admin for B {
    async fn list_contacts(&self, f: &ContactFilter) -> Result<Vec<Contact>> {
        contacts::list(self, f).await
    }
    async fn update_contact(
        &self,
        id: &str,
        patch: &ContactPatch,
        now: Millis,
    ) -> Result<Option<Contact>> {
        contacts::patch(self, id, patch, now).await
    }
    async fn delete_contact(&self, id: &str) -> Result<bool> {
        contacts::delete(self, id).await
    }
    async fn count_contacts(&self) -> Result<Vec<(Option<String>, i64)>> {
        contacts::count(self).await
    }

    async fn message(&self, id: &str) -> Result<Option<OutboxRecord>> {
        outbox::get(self, id).await
    }
    async fn list_messages(&self, f: &OutboxFilter) -> Result<Vec<OutboxRecord>> {
        outbox::list(self, f).await
    }
    async fn retry_message(&self, id: &str, now: Millis) -> Result<MessageChange> {
        outbox::retry(self, id, now).await
    }
    async fn cancel_message(&self, id: &str, now: Millis) -> Result<MessageChange> {
        outbox::cancel(self, id, now).await
    }
    async fn list_suppressions(
        &self,
        channel: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Suppression>> {
        suppressions::list(self, channel, limit).await
    }
    async fn lift_suppression(&self, channel: &str, address: &str) -> Result<bool> {
        suppressions::lift(self, channel, address).await
    }

    async fn cancel_runs(&self, s: &RunSelection, now: Millis, dry_run: bool) -> Result<u64> {
        runs::cancel_selected(self, s, now, dry_run).await
    }
    async fn purge(
        &self,
        runs_before: Option<Millis>,
        events_before: Option<Millis>,
        batch: i64,
    ) -> Result<Purged> {
        retention::purge(self, runs_before, events_before, batch).await
    }
}
