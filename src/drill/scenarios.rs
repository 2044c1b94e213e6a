//! The drills: `planned` (hand every group a region leads to another region
//! and back), `region-loss` (a fault takes the region down) and `partition`
//! (a fault cuts it off; reads are checked on both sides). Each measures
//! through the canary's log; `verify` then reads every acknowledged write
//! back.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use meridian_proto::v1::admin_client::AdminClient;
use meridian_proto::v1::kv_client::KvClient;
use meridian_proto::v1::{
    ClearFaultRequest, Consistency, GetRequest, InjectFaultRequest, PutRequest, ReadOptions,
    RevisionToken, TransferLeaseRequest,
};

use super::canary::{self, Canary, CanaryNs, Durability, Outcome, Write};
use super::report::Report;
use super::{Ctx, FaultArg, Region};
use crate::output::status_err;

/// How often recovery is polled.
const POLL: Duration = Duration::from_millis(50);
/// Load kept up after recovery, so the timeline shows writes flowing again.
const COOL_DOWN: Duration = Duration::from_secs(2);
/// How long the cluster has to look healthy again after a drill.
const HEALTHY_WAIT: Duration = Duration::from_secs(60);
/// A single read or write of the drill's own (not the canary's).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The bounded-staleness reads of the partition drill.
const BOUNDED_MS: u64 = 1_000;

async fn sleep_until(ctx: &Ctx, at_ms: u64) {
    let now = ctx.now_ms();
    if at_ms > now {
        tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
    }
}

async fn inject(ctx: &Ctx, kind: FaultArg) -> Result<u64> {
    let at = ctx.now_ms();
    ctx.drill(ctx.target())
        .inject_fault(InjectFaultRequest {
            drill_id: ctx.drill_id.clone(),
            kind: kind.as_str().into(),
            duration_ms: (ctx.common.fault_for + ctx.common.deadline_margin).as_millis() as u64,
        })
        .await
        .map_err(status_err)?;
    Ok(at)
}

/// End the fault; a region busy restarting is asked again.
async fn clear(ctx: &Ctx) -> Result<u64> {
    let mut last = None;
    for _ in 0..20 {
        let at = ctx.now_ms();
        let r = ctx
            .drill(ctx.target())
            .clear_fault(ClearFaultRequest {
                drill_id: ctx.drill_id.clone(),
            })
            .await;
        match r {
            Ok(_) => return Ok(at),
            Err(e) => last = Some(status_err(e)),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("the fault could not be cleared")))
}

/// Show the canary's progress until `until_ms`.
async fn hold(ctx: &Ctx, canary: &Canary, what: &str, until_ms: u64) {
    while ctx.now_ms() < until_ms {
        let log = canary.snapshot();
        let acked = log.iter().filter(|w| w.acked()).count();
        ctx.say(format!(
            "{what}: {:.1} s left; {acked} of {} canary writes acknowledged",
            (until_ms - ctx.now_ms()) as f64 / 1000.0,
            log.len()
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The canary load alone for `--warmup` (`when`: before or after a step).
async fn warm_up(ctx: &Ctx, canary: &Canary, when: &str) {
    let until = ctx.now_ms() + ctx.common.warmup.as_millis() as u64;
    hold(ctx, canary, &format!("canary load {when}"), until).await;
}

/// The first acknowledgement, through a region other than the one under
/// test, of a write to `ns` started at or after `t_fault`.
fn first_ack_elsewhere(ctx: &Ctx, log: &[Write], ns: usize, t_fault: u64) -> Option<u64> {
    log.iter()
        .filter(|w| w.ns == ns && w.via != ctx.target && w.started_ms >= t_fault && w.acked())
        .map(|w| w.done_ms)
        .min()
}

fn ns_of(namespaces: &[CanaryNs], home: usize, d: Durability) -> Option<usize> {
    namespaces
        .iter()
        .position(|n| n.home == home && n.durability == d)
}

/// RTO from the log: fault to the first write to the region's namespaces
/// acknowledged in another region.
fn rto(ctx: &Ctx, report: &mut Report, namespaces: &[CanaryNs], log: &[Write], t_fault: u64) {
    for d in [Durability::Quorum, Durability::Async] {
        let Some(ns) = ns_of(namespaces, ctx.target, d) else {
            continue;
        };
        let first = first_ack_elsewhere(ctx, log, ns, t_fault);
        let v = first.map(|t| t - t_fault);
        if let Some(t) = first {
            report.event(
                t,
                &format!("first {} write acknowledged elsewhere", durability(d)),
            );
        }
        match d {
            Durability::Quorum => report.figure(
                "rto_ms",
                v,
                "ms",
                Some(ctx.common.rto_ms_max),
                "fault to the first write to its quorum namespace acknowledged in another region",
            ),
            Durability::Async => {
                report.figure("rto_async_ms", v, "ms", None, "the same, async namespace")
            }
        }
    }
}

fn durability(d: Durability) -> &'static str {
    match d {
        Durability::Quorum => "quorum",
        Durability::Async => "async",
    }
}

/// The time from `t_clear` until the region under test has applied the
/// last write acknowledged elsewhere before it (a stale read there with
/// that write's revision token finds it).
async fn catch_up(ctx: &Ctx, canary: &Canary, t_clear: u64) -> Option<u64> {
    let log = canary.snapshot();
    let ns = ns_of(&canary.namespaces, ctx.target, Durability::Quorum)?;
    let last = log
        .iter()
        .filter(|w| w.ns == ns && w.via != ctx.target && w.done_ms <= t_clear)
        .filter_map(|w| match &w.outcome {
            Outcome::Acked(Some(t)) => Some((t.revision, w.key.clone(), *t)),
            _ => None,
        })
        .max_by_key(|(r, _, _)| *r)?;
    let (_, key, token) = last;
    let deadline = t_clear + ctx.common.catch_up_ms_max + 5_000;
    while ctx.now_ms() < deadline {
        ctx.say(format!(
            "waiting for {} to catch up ({:.1} s since the fault ended)",
            ctx.target().name,
            (ctx.now_ms() - t_clear) as f64 / 1000.0
        ));
        let r = read(
            ctx.target(),
            &canary.namespaces[ns].name,
            &key,
            Consistency::Stale,
            Some(token),
        )
        .await;
        if let Ok(Some(_)) = r {
            return Some(ctx.now_ms() - t_clear);
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

/// One read of the drill's own: the value if found, None if absent.
async fn read(
    via: &Region,
    ns: &str,
    key: &str,
    consistency: Consistency,
    token: Option<RevisionToken>,
) -> Result<Option<String>, String> {
    let req = GetRequest {
        namespace: ns.into(),
        key: key.into(),
        read: Some(ReadOptions {
            consistency: consistency as i32,
            max_staleness_ms: BOUNDED_MS,
            token,
        }),
    };
    match tokio::time::timeout(CALL_TIMEOUT, KvClient::new(via.ch.clone()).get(req)).await {
        Err(_) => Err("no answer in 3 s".into()),
        Ok(Err(s)) => Err(super::reason(&s)),
        Ok(Ok(r)) => {
            let r = r.into_inner();
            Ok(r.found
                .then(|| String::from_utf8_lossy(&r.kv.unwrap_or_default().value).into_owned()))
        }
    }
}

async fn write(
    via: &Region,
    ns: &str,
    key: &str,
    value: &str,
) -> Result<Option<RevisionToken>, String> {
    let req = PutRequest {
        namespace: ns.into(),
        key: key.into(),
        value: value.as_bytes().to_vec(),
        request_id: 0,
    };
    match tokio::time::timeout(CALL_TIMEOUT, KvClient::new(via.ch.clone()).put(req)).await {
        Err(_) => Err("no answer in 3 s".into()),
        Ok(Err(s)) => Err(super::reason(&s)),
        Ok(Ok(r)) => Ok(r.into_inner().token),
    }
}

/// How long after the fault ended the region leads its own group again
/// (lease preference brings the lease home after a delay).
async fn home_return(ctx: &Ctx, t_clear: u64) -> Option<u64> {
    let deadline = ctx.now_ms() + HEALTHY_WAIT.as_millis() as u64;
    while ctx.now_ms() < deadline {
        if let Ok(s) = ctx.status(ctx.target()).await {
            let home = s.groups.get(ctx.target).and_then(|g| g.leader);
            if s.fault.is_none() && home == Some(ctx.target as u32) {
                return Some(ctx.now_ms() - t_clear);
            }
        }
        ctx.say(format!(
            "waiting for {} to lead its group again",
            ctx.target().name
        ));
        tokio::time::sleep(POLL * 4).await;
    }
    None
}

/// The cluster after a drill: every region reachable, connected to every
/// other, no fault in force, every group led.
async fn healthy_again(ctx: &Ctx, report: &mut Report) {
    let deadline = ctx.now_ms() + HEALTHY_WAIT.as_millis() as u64;
    let mut why = String::new();
    while ctx.now_ms() < deadline {
        why.clear();
        for r in &ctx.regions {
            match ctx.status(r).await {
                Err(e) => why = format!("{} does not answer: {e:#}", r.name),
                Ok(s) => why = super::unhealthy(r, &s).unwrap_or_default(),
            }
            if !why.is_empty() {
                break;
            }
        }
        if why.is_empty() {
            break;
        }
        ctx.say(format!("waiting for the cluster to be healthy: {why}"));
        tokio::time::sleep(POLL * 4).await;
    }
    let ok = why.is_empty();
    report.check(
        "cluster healthy after the drill",
        "every region connected, no fault, every group led",
        if ok { "healthy".into() } else { why },
        ok,
    );
}

/// Read every acknowledged write back (linearizably, through a region other
/// than the one under test): RPO.
async fn verify(
    ctx: &Ctx,
    report: &mut Report,
    namespaces: &[CanaryNs],
    log: &[Write],
    t_fault: Option<u64>,
) -> Result<()> {
    ctx.say("reading every acknowledged write back");
    let via = ctx.survivors().next().unwrap_or(ctx.target());
    let mut lost: BTreeMap<Durability, Vec<&Write>> = BTreeMap::new();
    for (i, ns) in namespaces.iter().enumerate() {
        let present = canary::keys_present(ctx, via, &ns.name).await?;
        let entry = lost.entry(ns.durability).or_default();
        entry.extend(
            log.iter()
                .filter(|w| w.ns == i && w.acked() && !present.contains(&w.key)),
        );
    }
    let quorum = lost.get(&Durability::Quorum).map_or(0, Vec::len) as u64;
    report.figure(
        "rpo_lost_quorum_writes",
        Some(quorum),
        "writes",
        Some(0),
        "acknowledged quorum writes missing afterwards",
    );
    if ctx.common.with_async {
        let lost_async = lost.get(&Durability::Async).cloned().unwrap_or_default();
        let budget = namespaces
            .iter()
            .filter(|n| n.durability == Durability::Async)
            .filter_map(|n| n.rpo_budget_ms)
            .min();
        match t_fault {
            // The old leader acknowledges alone until its unreplicated tail
            // is older than the budget: what it loses spans at most that.
            Some(t) => {
                let first = lost_async.iter().map(|w| w.done_ms).min();
                let last = lost_async.iter().map(|w| w.done_ms).max();
                let window = first.zip(last).map_or(0, |(a, b)| b - a);
                if let (Some(a), Some(b)) = (first, last) {
                    report.event(a, "first lost async write acknowledged");
                    report.event(b, "last lost async write acknowledged");
                }
                report.figure(
                    "rpo_lost_async_writes",
                    Some(lost_async.len() as u64),
                    "writes",
                    None,
                    &format!(
                        "acknowledged async writes missing afterwards{}",
                        first.map_or(String::new(), |a| format!(
                            ", acknowledged from {:+.1} s around the fault",
                            (a as f64 - t as f64) / 1000.0
                        ))
                    ),
                );
                report.figure(
                    "rpo_async_window_ms",
                    Some(window),
                    "ms",
                    budget,
                    "span of the lost async writes' acknowledgements, bounded by the namespace's RPO budget",
                );
            }
            None => report.figure(
                "rpo_lost_async_writes",
                Some(lost_async.len() as u64),
                "writes",
                Some(0),
                "a planned hand-over waits for the new leader to hold every entry",
            ),
        }
    }
    Ok(())
}

pub async fn region_loss(ctx: &Ctx, fault: FaultArg) -> Result<Report> {
    let mut report = Report::new(
        &ctx.drill_id,
        "region-loss",
        &ctx.target().name,
        Some(fault.as_str().into()),
        ctx.started_ms,
    );
    ctx.say("creating the canary namespaces");
    let namespaces = canary::namespaces(ctx, &[ctx.target]).await?;
    let canary = Canary::start(ctx, namespaces);
    warm_up(ctx, &canary, "before the fault").await;
    let t_fault = inject(ctx, fault).await?;
    report.event(
        t_fault,
        &format!("{} fault: {}", fault.as_str(), ctx.target().name),
    );
    let fault_ms = ctx.common.fault_for.as_millis() as u64;
    hold(
        ctx,
        &canary,
        &format!("{} down ({})", ctx.target().name, fault.as_str()),
        t_fault + fault_ms,
    )
    .await;
    finish_outage(ctx, &mut report, canary, t_fault).await?;
    Ok(report)
}

/// End the fault and measure what follows; stop the canary and verify.
async fn finish_outage(ctx: &Ctx, report: &mut Report, canary: Canary, t_fault: u64) -> Result<()> {
    let t_clear = clear(ctx).await?;
    report.event(t_clear, "fault cleared");
    let caught = catch_up(ctx, &canary, t_clear).await;
    if let Some(c) = caught {
        report.event(t_clear + c, &format!("{} caught up", ctx.target().name));
    }
    report.figure(
        "catch_up_ms",
        caught,
        "ms",
        Some(ctx.common.catch_up_ms_max),
        "fault cleared to the region having applied every write acknowledged elsewhere before",
    );
    let back = home_return(ctx, t_clear).await;
    if let Some(b) = back {
        report.event(
            t_clear + b,
            &format!("{} leads its group again", ctx.target().name),
        );
    }
    report.figure(
        "home_return_ms",
        back,
        "ms",
        None,
        "fault cleared to the region leading its own group again",
    );
    hold(
        ctx,
        &canary,
        "canary load after recovery",
        ctx.now_ms() + COOL_DOWN.as_millis() as u64,
    )
    .await;
    let (namespaces, log) = canary.stop().await;
    rto(ctx, report, &namespaces, &log, t_fault);
    report.tally(&log);
    verify(ctx, report, &namespaces, &log, Some(t_fault)).await?;
    healthy_again(ctx, report).await;
    Ok(())
}

pub async fn partition(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new(
        &ctx.drill_id,
        "partition",
        &ctx.target().name,
        Some("isolate".into()),
        ctx.started_ms,
    );
    ctx.say("creating the canary namespaces");
    let namespaces = canary::namespaces(ctx, &[ctx.target]).await?;
    let Some(q) = ns_of(&namespaces, ctx.target, Durability::Quorum) else {
        bail!("no quorum canary namespace");
    };
    let ns = namespaces[q].name.clone();
    let probe = format!("{}/probe", ctx.drill_id);
    let survivor = ctx.survivors().next().unwrap_or(ctx.target()).clone();
    // The value every region holds before the cut.
    let before = "before the cut";
    let token = write(&survivor, &ns, &probe, before)
        .await
        .map_err(|e| anyhow::anyhow!("writing the probe key: {e}"))?;
    let seen = read(ctx.target(), &ns, &probe, Consistency::Stale, token).await;
    if seen != Ok(Some(before.into())) {
        bail!(
            "{} did not apply the probe write before the cut: {seen:?}",
            ctx.target().name
        );
    }
    let canary = Canary::start(ctx, namespaces);
    warm_up(ctx, &canary, "before the cut").await;
    let t_fault = inject(ctx, FaultArg::Isolate).await?;
    report.event(t_fault, &format!("cut off: {}", ctx.target().name));
    let fault_ms = ctx.common.fault_for.as_millis() as u64;
    let end = t_fault + fault_ms;
    // The majority side takes writes again (the probe's new value).
    let after = "after the cut";
    let mut written = false;
    while ctx.now_ms() + 2 * BOUNDED_MS < end {
        ctx.say("the majority side: writing the probe key");
        if write(&survivor, &ns, &probe, after).await.is_ok() {
            written = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    report.check(
        "a write in the majority while cut off",
        "acknowledged",
        if written {
            "acknowledged".into()
        } else {
            "never acknowledged".into()
        },
        written,
    );
    // Past the bound: the cut-off side can no longer prove it is fresh.
    sleep_until(ctx, (t_fault + 2 * BOUNDED_MS).max(ctx.now_ms())).await;
    ctx.say("checking reads on both sides of the cut");
    partition_reads(
        ctx,
        &mut report,
        &survivor,
        &ns,
        &probe,
        before,
        after,
        written,
    )
    .await;
    report.event(ctx.now_ms(), "reads checked");
    hold(ctx, &canary, &format!("{} cut off", ctx.target().name), end).await;
    finish_outage(ctx, &mut report, canary, t_fault).await?;
    // Healed: the region sees the majority's write.
    let healed = read(ctx.target(), &ns, &probe, Consistency::Linearizable, None).await;
    let ok = !written || healed == Ok(Some(after.into()));
    report.check(
        &format!("linearizable read in {} after the heal", ctx.target().name),
        "the majority's write",
        describe(&healed),
        ok,
    );
    Ok(report)
}

fn describe(r: &Result<Option<String>, String>) -> String {
    match r {
        Ok(Some(v)) => format!("served {v:?}"),
        Ok(None) => "served: not found".into(),
        Err(e) => format!("refused ({e})"),
    }
}

/// Reads at each consistency level on both sides of the cut, against the
/// documented behaviour (docs/operations.md, "partition").
#[allow(clippy::too_many_arguments)]
async fn partition_reads(
    ctx: &Ctx,
    report: &mut Report,
    survivor: &Region,
    ns: &str,
    probe: &str,
    before: &str,
    after: &str,
    written: bool,
) {
    let cut = ctx.target();
    let newest = if written { after } else { before };
    // The cut-off region: stale reads serve what it has; bounded and
    // linearizable reads must not serve data older than they promise.
    let r = read(cut, ns, probe, Consistency::Stale, None).await;
    report.check(
        &format!("stale read in {} while cut off", cut.name),
        "served from local state (the value before the cut)",
        describe(&r),
        r == Ok(Some(before.into())),
    );
    let never_stale = |r: &Result<Option<String>, String>| match r {
        Err(_) => true,
        Ok(v) => v.as_deref() == Some(newest),
    };
    let r = read(cut, ns, probe, Consistency::Bounded, None).await;
    report.check(
        &format!(
            "bounded ({BOUNDED_MS} ms) read in {} while cut off",
            cut.name
        ),
        "refused, never the pre-cut value",
        describe(&r),
        never_stale(&r),
    );
    let r = read(cut, ns, probe, Consistency::Linearizable, None).await;
    report.check(
        &format!("linearizable read in {} while cut off", cut.name),
        "refused, never the pre-cut value",
        describe(&r),
        never_stale(&r),
    );
    // The majority: linearizable reads see the newest write.
    let r = read(survivor, ns, probe, Consistency::Linearizable, None).await;
    report.check(
        &format!(
            "linearizable read in {} while {} is cut off",
            survivor.name, cut.name
        ),
        "served, the newest value",
        describe(&r),
        r == Ok(Some(newest.into())),
    );
    let r = read(survivor, ns, probe, Consistency::Stale, None).await;
    report.check(
        &format!(
            "stale read in {} while {} is cut off",
            survivor.name, cut.name
        ),
        "served",
        describe(&r),
        r.is_ok(),
    );
}

pub async fn planned(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new(
        &ctx.drill_id,
        "planned",
        &ctx.target().name,
        None,
        ctx.started_ms,
    );
    let s = ctx.status(ctx.target()).await?;
    let led: Vec<usize> = s
        .groups
        .iter()
        .filter(|g| g.leader == Some(ctx.target as u32))
        .map(|g| g.group as usize)
        .collect();
    report.check(
        &format!("{} leads at least one group", ctx.target().name),
        "a group to move",
        format!("leads {} group(s)", led.len()),
        !led.is_empty(),
    );
    ctx.say("creating the canary namespaces");
    let namespaces = canary::namespaces(ctx, &led).await?;
    let canary = Canary::start(ctx, namespaces);
    warm_up(ctx, &canary, "before the hand-over").await;
    let mut windows = Vec::new();
    for &g in &led {
        let to = ctx.survivors().next().map_or(ctx.target, |r| r.id);
        for (from, to) in [(ctx.target, to), (to, ctx.target)] {
            let name = format!(
                "pause_ms[{} group {} -> {}]",
                ctx.regions[g].name, ctx.regions[from].name, ctx.regions[to].name
            );
            ctx.say(format!(
                "moving group {} to {}",
                ctx.regions[g].name, ctx.regions[to].name
            ));
            let start = ctx.now_ms();
            let moved = transfer(ctx, g, to).await;
            let end = ctx.now_ms();
            report.event(
                start,
                &format!(
                    "group {}: {} -> {}",
                    ctx.regions[g].name, ctx.regions[from].name, ctx.regions[to].name
                ),
            );
            if let Err(e) = &moved {
                report.check(
                    &format!(
                        "group {} moved to {}",
                        ctx.regions[g].name, ctx.regions[to].name
                    ),
                    "moved",
                    format!("{e:#}"),
                    false,
                );
            }
            windows.push((g, name, start, end));
            warm_up(ctx, &canary, "after the hand-over").await;
        }
    }
    let (namespaces, log) = canary.stop().await;
    for (g, name, start, end) in windows {
        let ns = ns_of(&namespaces, g, Durability::Quorum);
        let pause = ns.map(|ns| write_pause(&log, ns, start, end));
        report.figure(
            &name,
            pause,
            "ms",
            Some(ctx.common.pause_ms_max),
            "longest gap between acknowledged writes to the group around the hand-over",
        );
    }
    report.tally(&log);
    verify(ctx, &mut report, &namespaces, &log, None).await?;
    healthy_again(ctx, &mut report).await;
    Ok(report)
}

/// Move group `g`'s leadership to region `to` and wait until it leads.
async fn transfer(ctx: &Ctx, g: usize, to: usize) -> Result<()> {
    let deadline = ctx.now_ms() + 10_000;
    AdminClient::new(ctx.target().ch.clone())
        .transfer_lease(TransferLeaseRequest {
            group: g as u32,
            to_region: ctx.regions[to].name.clone(),
        })
        .await
        .map_err(status_err)?;
    while ctx.now_ms() < deadline {
        if let Ok(s) = ctx.status(&ctx.regions[to]).await {
            if s.groups.get(g).and_then(|x| x.leader) == Some(to as u32) {
                return Ok(());
            }
        }
        tokio::time::sleep(POLL).await;
    }
    bail!(
        "{} did not lead group {} within 10 s",
        ctx.regions[to].name,
        ctx.regions[g].name
    )
}

/// The longest time without an acknowledged write to `ns` that overlaps the
/// window from `start` to `end` (the hand-over).
fn write_pause(log: &[Write], ns: usize, start: u64, end: u64) -> u64 {
    let mut acks: Vec<u64> = log
        .iter()
        .filter(|w| w.ns == ns && w.acked())
        .map(|w| w.done_ms)
        .collect();
    acks.sort_unstable();
    let before = acks
        .iter()
        .rev()
        .find(|t| **t <= start)
        .copied()
        .unwrap_or(start);
    let mut worst = 0;
    let mut prev = before;
    for &t in acks.iter().filter(|t| **t > before) {
        worst = worst.max(t - prev);
        prev = t;
        if t >= end {
            break;
        }
    }
    // Still no write at the window's end: the pause lasted at least that long.
    if prev < end {
        worst = worst.max(end - prev);
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(done_ms: u64) -> Write {
        Write {
            ns: 0,
            via: 1,
            key: String::new(),
            started_ms: done_ms.saturating_sub(5),
            done_ms,
            outcome: Outcome::Acked(None),
        }
    }

    #[test]
    fn the_pause_is_the_longest_gap_around_the_hand_over() {
        let log: Vec<Write> = [100, 120, 140, 600, 620, 640, 2000]
            .into_iter()
            .map(ack)
            .collect();
        // The hand-over ran from 150 to 610: the gap 140..600.
        assert_eq!(write_pause(&log, 0, 150, 610), 460);
        // Gaps after the window's end do not count.
        assert_eq!(write_pause(&log, 0, 600, 605), 20);
        // Another namespace's writes are not this one's: none at all is
        // a pause over the whole window.
        assert_eq!(write_pause(&log, 1, 150, 610), 460);
    }
}
