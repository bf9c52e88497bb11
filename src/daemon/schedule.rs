//! The cycle schedule: `schedule.cron` (six fields, seconds first) in
//! `schedule.timezone`, run by tokio-cron-scheduler. A tick only sends a
//! message; whether a cycle starts is the daemon's decision.
//!
//! tokio-cron-scheduler fixes the zone's UTC offset when a job is created,
//! so across a daylight-saving change its ticks would drift by the change.
//! [`Schedule::follow_offset_change`] recreates the job when the zone's
//! offset moved; the daemon calls it at every housekeeping round.

use chrono::{DateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use uuid::Uuid;

use crate::config::ScheduleSettings;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("the cycle scheduler failed: {0}")]
    Scheduler(#[from] JobSchedulerError),
}

/// A scheduled tick: the wall-clock time it was delivered.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    pub at: DateTime<Utc>,
}

pub struct Schedule {
    scheduler: JobScheduler,
    job: Uuid,
    settings: ScheduleSettings,
    /// The offset the current job was created with.
    offset_seconds: i32,
    ticks: mpsc::UnboundedSender<Tick>,
}

impl Schedule {
    /// Start ticking into `ticks`.
    pub async fn start(
        settings: &ScheduleSettings,
        ticks: mpsc::UnboundedSender<Tick>,
    ) -> Result<Schedule, ScheduleError> {
        let scheduler = JobScheduler::new().await?;
        let now = Utc::now();
        let job = scheduler.add(tick_job(settings, ticks.clone())?).await?;
        scheduler.start().await?;
        Ok(Schedule {
            scheduler,
            job,
            settings: settings.clone(),
            offset_seconds: utc_offset_seconds(settings.timezone(), now),
            ticks,
        })
    }

    pub fn expression(&self) -> &str {
        self.settings.expression()
    }

    pub fn timezone(&self) -> Tz {
        self.settings.timezone()
    }

    /// The first tick after `after`, in the schedule's zone.
    pub fn next_tick(&self, after: DateTime<Utc>) -> Option<DateTime<Tz>> {
        next_tick(self.settings.cron(), self.settings.timezone(), after)
    }

    /// Recreate the job when the zone's UTC offset is no longer the one it
    /// was created with. Returns the new offset when it did.
    pub async fn follow_offset_change(
        &mut self,
        now: DateTime<Utc>,
    ) -> Result<Option<i32>, ScheduleError> {
        let offset = utc_offset_seconds(self.settings.timezone(), now);
        if offset == self.offset_seconds {
            return Ok(None);
        }
        let job = tick_job(&self.settings, self.ticks.clone())?;
        let new_job = self.scheduler.add(job).await?;
        self.scheduler.remove(&self.job).await?;
        self.job = new_job;
        self.offset_seconds = offset;
        Ok(Some(offset))
    }

    /// No more ticks.
    pub async fn shutdown(&mut self) -> Result<(), ScheduleError> {
        self.scheduler.remove(&self.job).await?;
        self.scheduler.shutdown().await?;
        Ok(())
    }
}

/// The scheduler parses the expression again: it takes no parsed one.
fn tick_job(
    settings: &ScheduleSettings,
    ticks: mpsc::UnboundedSender<Tick>,
) -> Result<Job, ScheduleError> {
    Ok(Job::new_tz(
        settings.expression(),
        settings.timezone(),
        move |_job, _scheduler| {
            // The receiver is gone only while the daemon shuts down.
            let _ = ticks.send(Tick { at: Utc::now() });
        },
    )?)
}

pub fn next_tick(cron: &Cron, timezone: Tz, after: DateTime<Utc>) -> Option<DateTime<Tz>> {
    cron.find_next_occurrence(&after.with_timezone(&timezone), false)
        .ok()
}

pub fn utc_offset_seconds(timezone: Tz, at: DateTime<Utc>) -> i32 {
    timezone
        .offset_from_utc_datetime(&at.naive_utc())
        .fix()
        .local_minus_utc()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cron::parse_cron;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn next_tick_follows_the_zone_across_daylight_saving() {
        let daily_at_three = parse_cron("0 0 3 * * *").unwrap();
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let cases = [
            // Winter: 03:00 CET is 02:00 UTC.
            ("2025-03-29T12:00:00Z", "2025-03-30T03:00:00+02:00"),
            // The spring-forward night: 03:00 CEST is 01:00 UTC.
            ("2025-03-30T00:30:00Z", "2025-03-30T03:00:00+02:00"),
            ("2025-03-30T01:00:00Z", "2025-03-31T03:00:00+02:00"),
            ("2025-10-25T12:00:00Z", "2025-10-26T03:00:00+01:00"),
        ];
        for (after, expected) in cases {
            let next = next_tick(&daily_at_three, berlin, utc(after)).unwrap();
            assert_eq!(next.to_rfc3339(), expected, "after {after}");
        }
    }

    #[test]
    fn every_two_seconds_ticks_on_even_seconds() {
        let cron = parse_cron("*/2 * * * * *").unwrap();
        let next = next_tick(&cron, Tz::UTC, utc("2025-01-01T00:00:01Z")).unwrap();
        assert_eq!(next.to_rfc3339(), "2025-01-01T00:00:02+00:00");
        let next = next_tick(&cron, Tz::UTC, utc("2025-01-01T00:00:02Z")).unwrap();
        assert_eq!(next.to_rfc3339(), "2025-01-01T00:00:04+00:00");
    }

    #[test]
    fn offsets_change_with_daylight_saving() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            utc_offset_seconds(berlin, utc("2025-01-15T12:00:00Z")),
            3600
        );
        assert_eq!(
            utc_offset_seconds(berlin, utc("2025-07-15T12:00:00Z")),
            7200
        );
        assert_eq!(utc_offset_seconds(Tz::UTC, utc("2025-07-15T12:00:00Z")), 0);
    }

    #[tokio::test]
    async fn ticks_arrive_on_a_seconds_schedule() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let settings = ScheduleSettings::parse("* * * * * *", "UTC").unwrap();
        let mut schedule = Schedule::start(&settings, tx).await.unwrap();
        let tick = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("a tick within ten seconds")
            .unwrap();
        assert!(tick.at <= Utc::now());
        // Recreating the job for an offset change keeps ticking.
        schedule.offset_seconds += 1;
        assert_eq!(
            schedule.follow_offset_change(Utc::now()).await.unwrap(),
            Some(0)
        );
        while rx.try_recv().is_ok() {}
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("a tick after the job was recreated")
            .unwrap();
        schedule.shutdown().await.unwrap();
    }
}
