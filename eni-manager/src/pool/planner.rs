//! Decides which cloud calls the pool needs now: a pure function of the model, the node's
//! limits, the demand waiting and the clock.
//!
//! Rules: keep idle shared addresses between the low and high watermarks (and the total at
//! least `min_total`); fill ENIs already attached before creating one (one assign per ENI per
//! round, at most the per-call maximum); create ENIs with all the addresses they should hold
//! in the create call itself; never two operations on one ENI at once; release only what has
//! been idle for the cool-down, whole ENIs first. The caller runs the actions; this module
//! does no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::state::{EniKind, EniPhase, EniRecord, Intent, PoolState};

/// Addresses in one /28 prefix.
pub const PREFIX_SIZE: u32 = 16;
/// Most secondary IPs (or prefixes) one assign call adds.
pub const MAX_PER_ASSIGN: u32 = 10;
/// Most secondary IPs one create call adds.
pub const MAX_IPS_PER_CREATE: u32 = 49;
/// Most prefixes one create call adds.
pub const MAX_PREFIXES_PER_CREATE: u32 = 10;
/// Most addresses one unassign call removes.
pub const MAX_PER_UNASSIGN: usize = 32;

/// Pool settings the planner needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTargets {
    /// Low watermark of idle shared addresses.
    pub min_idle: u32,
    /// High watermark of idle shared addresses.
    pub max_idle: u32,
    /// Keep at least this many shared addresses in total (idle + allocated).
    pub min_total: u32,
    /// Idle time before a surplus address or ENI is released (ms).
    pub release_cooldown_ms: u64,
    /// Hand out /28 prefixes instead of single secondary IPs.
    pub prefix_mode: bool,
    /// Exclusive ENIs to keep ready beyond demand.
    pub exclusive_warm: u32,
    /// A shared ENI created while pods wait gets every address it can hold (its slots, the
    /// per-create maximum, what its subnet has left), not just what is asked for so far: a
    /// burst arriving over several rounds then needs one create per ENI and no top-ups.
    pub fill_new_enis: bool,
}

/// The instance type's limits, possibly capped by configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// ENIs per instance, the primary included.
    pub max_enis: u32,
    /// IPv4 slots per ENI, the ENI's primary included.
    pub ipv4_per_eni: u32,
}

impl Limits {
    /// Most pods with shared addresses: every secondary ENI full of secondary IPs.
    pub fn max_shared_pods(&self) -> u32 {
        self.max_enis.saturating_sub(1) * self.ipv4_per_eni.saturating_sub(1)
    }
}

/// A vSwitch/subnet the pool may create ENIs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetChoice {
    /// Its id.
    pub id: String,
    /// Free addresses, as last reported (`None`: unknown).
    pub available: Option<u64>,
    /// Blocked (recently reported exhausted).
    pub blocked: bool,
}

/// Everything the planner looks at.
#[derive(Debug)]
pub struct PlanInput<'a> {
    /// The model.
    pub state: &'a PoolState,
    /// Limits.
    pub limits: Limits,
    /// Targets.
    pub targets: &'a PoolTargets,
    /// Allocate requests waiting for a shared address.
    pub waiting_shared: u32,
    /// Allocate requests waiting for an exclusive ENI.
    pub waiting_exclusive: u32,
    /// Since when each idle address (or idle exclusive ENI's primary address) has been idle.
    pub idle_since: &'a HashMap<Ipv4Addr, u64>,
    /// Now (ms since epoch).
    pub now_ms: u64,
    /// Subnets in order of preference, already sorted by the selection strategy.
    pub subnets: &'a [SubnetChoice],
}

/// One cloud operation to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Add addresses to an attached ENI.
    Assign {
        /// The ENI.
        eni_id: String,
        /// Secondary IPs.
        ips: u32,
        /// Prefixes.
        prefixes: u32,
    },
    /// Create, attach and bring up an ENI.
    CreateEni {
        /// vSwitch/subnet.
        subnet_id: String,
        /// Shared or exclusive.
        kind: EniKind,
        /// Secondary IPs in the create call.
        ips: u32,
        /// Prefixes in the create call.
        prefixes: u32,
    },
    /// Remove idle addresses from an ENI.
    Unassign {
        /// The ENI.
        eni_id: String,
        /// Addresses.
        ips: BTreeSet<Ipv4Addr>,
        /// Prefixes.
        prefixes: BTreeSet<Ipv4Net>,
    },
    /// Detach and delete an idle ENI.
    RemoveEni {
        /// The ENI.
        eni_id: String,
    },
}

/// Why demand waiting now cannot be met by anything the pool may still do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// Every ENI slot of the instance is used and every ENI is full.
    EniLimit {
        /// ENIs the instance allows.
        max_enis: u32,
        /// Shared pods the node can hold.
        max_pods: u32,
    },
    /// An ENI is needed but every vSwitch/subnet is exhausted or blocked.
    SubnetsExhausted {
        /// The subnets tried.
        subnets: Vec<String>,
    },
}

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Operations to start now.
    pub actions: Vec<Action>,
    /// Set when waiting demand cannot be met.
    pub blocked: Option<Blocked>,
    /// Shared addresses the waiting requests can still get: idle, in flight, planned now, and
    /// room on ENIs attached or being created that a later round fills. When `blocked`, the
    /// waiters beyond this number are failed.
    pub servable: u32,
}

fn busy_enis(state: &PoolState) -> BTreeSet<&str> {
    state.intents.values().filter_map(Intent::eni_id).collect()
}

fn eni_count(state: &PoolState) -> u32 {
    let creating = state
        .intents
        .values()
        .filter(|i| matches!(i, Intent::CreateEni { .. }))
        .count() as u32;
    // The primary ENI is never in the model but takes a slot.
    1 + state.enis.len() as u32 + creating
}

/// Decides what to do now.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut plan = Plan::default();
    let state = input.state;
    let t = input.targets;
    let busy = busy_enis(state);
    let mut enis_used = eni_count(state);
    let mut subnets: Vec<SubnetChoice> = input.subnets.to_vec();
    let unit = if t.prefix_mode { PREFIX_SIZE } else { 1 };

    // Exclusive ENIs: waiting pods and the warm target.
    let idle_excl = state.idle_exclusive().len() as u32;
    let incoming_excl = state
        .intents
        .values()
        .filter(|i| {
            matches!(
                i,
                Intent::CreateEni {
                    kind: EniKind::Exclusive,
                    ..
                }
            )
        })
        .count() as u32;
    let mut need_excl =
        (input.waiting_exclusive + t.exclusive_warm).saturating_sub(idle_excl + incoming_excl);
    while need_excl > 0 && enis_used < input.limits.max_enis {
        match pick_subnet(&mut subnets, 0, unit) {
            Some((subnet_id, _)) => {
                plan.actions.push(Action::CreateEni {
                    subnet_id,
                    kind: EniKind::Exclusive,
                    ips: 0,
                    prefixes: 0,
                });
                enis_used += 1;
                need_excl -= 1;
            }
            None => {
                if input.waiting_exclusive > 0 {
                    plan.blocked = Some(Blocked::SubnetsExhausted {
                        subnets: input.subnets.iter().map(|s| s.id.clone()).collect(),
                    });
                }
                break;
            }
        }
    }
    if input.waiting_exclusive > idle_excl + incoming_excl
        && enis_used >= input.limits.max_enis
        && plan.blocked.is_none()
        && plan
            .actions
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::CreateEni {
                        kind: EniKind::Exclusive,
                        ..
                    }
                )
            })
            .count() as u32
            + idle_excl
            + incoming_excl
            < input.waiting_exclusive
    {
        plan.blocked = Some(Blocked::EniLimit {
            max_enis: input.limits.max_enis,
            max_pods: input.limits.max_shared_pods(),
        });
    }

    // Shared addresses.
    let idle = state.idle_ips().len() as u32;
    let shared_enis: Vec<&EniRecord> = state
        .enis
        .values()
        .filter(|e| e.kind == EniKind::Shared && e.phase == EniPhase::Ready)
        .collect();
    let leaving = state.leaving_ips();
    let total: u32 = shared_enis
        .iter()
        .map(|e| e.ips.iter().filter(|ip| !leaving.contains(ip)).count() as u32)
        .sum();
    let incoming: u32 = state
        .intents
        .values()
        .map(|i| i.incoming(PREFIX_SIZE))
        .sum();
    let want_idle = t.min_idle + input.waiting_shared;
    let mut need = want_idle
        .saturating_sub(idle + incoming)
        .max(t.min_total.saturating_sub(total + incoming));
    let per_eni_slots = input.limits.ipv4_per_eni.saturating_sub(1);
    if need > 0 {
        let mut fillable: Vec<&&EniRecord> = shared_enis
            .iter()
            .filter(|e| !busy.contains(e.id.as_str()))
            .collect();
        fillable.sort_by_key(|e| (e.device_index, e.id.clone()));
        for eni in fillable {
            if need == 0 {
                break;
            }
            let free = input.limits.ipv4_per_eni.saturating_sub(eni.slots_used());
            let mut n = need.div_ceil(unit).min(free).min(MAX_PER_ASSIGN);
            // The ENI's vSwitch/subnet must have the addresses: skip one reported exhausted,
            // ask no more than it has left.
            if let Some(sub) = subnets.iter_mut().find(|s| s.id == eni.subnet_id) {
                if sub.blocked {
                    continue;
                }
                if let Some(a) = sub.available.as_mut() {
                    n = n.min(u32::try_from(*a / u64::from(unit)).unwrap_or(u32::MAX));
                    *a = a.saturating_sub(u64::from(n * unit));
                }
            }
            if n == 0 {
                continue;
            }
            plan.actions.push(if t.prefix_mode {
                Action::Assign {
                    eni_id: eni.id.clone(),
                    ips: 0,
                    prefixes: n,
                }
            } else {
                Action::Assign {
                    eni_id: eni.id.clone(),
                    ips: n,
                    prefixes: 0,
                }
            });
            need = need.saturating_sub(n * unit);
        }
        // Room on ENIs busy with an assign: they are topped up when it finishes (a round trip
        // of a fraction of a second), which beats creating and attaching a new ENI (seconds).
        let busy_room: u32 = shared_enis
            .iter()
            .filter(|e| busy.contains(e.id.as_str()))
            .map(|e| {
                let pending: u32 = state
                    .intents
                    .values()
                    .filter_map(|i| match i {
                        Intent::Assign {
                            eni_id,
                            ips,
                            prefixes,
                            ..
                        } if *eni_id == e.id => Some(ips + prefixes),
                        _ => None,
                    })
                    .sum();
                input
                    .limits
                    .ipv4_per_eni
                    .saturating_sub(e.slots_used() + pending)
                    * unit
            })
            .sum();
        // Room on ENIs still being created and attached: topped up once they are ready. A new
        // ENI would take as long (create and attach) and use a slot of the instance's limit,
        // so a burst that arrives in several batches ends on as few ENIs as one batch would.
        let creating_room: u32 = state
            .intents
            .values()
            .filter_map(|i| match i {
                Intent::CreateEni {
                    kind: EniKind::Shared,
                    ips,
                    prefixes,
                    ..
                } => Some(per_eni_slots.saturating_sub(ips + prefixes) * unit),
                _ => None,
            })
            .sum();
        need = need.saturating_sub(busy_room + creating_room);
        let mut subnets_out = false;
        while need > 0 && enis_used < input.limits.max_enis && per_eni_slots > 0 {
            let cap = if t.prefix_mode {
                MAX_PREFIXES_PER_CREATE
            } else {
                MAX_IPS_PER_CREATE
            };
            let want = if t.fill_new_enis && input.waiting_shared > 0 {
                per_eni_slots.min(cap)
            } else {
                need.div_ceil(unit).min(per_eni_slots).min(cap)
            };
            let Some((subnet_id, n)) = pick_subnet(&mut subnets, want, unit) else {
                subnets_out = true;
                break;
            };
            plan.actions.push(Action::CreateEni {
                subnet_id,
                kind: EniKind::Shared,
                ips: if t.prefix_mode { 0 } else { n },
                prefixes: if t.prefix_mode { n } else { 0 },
            });
            enis_used += 1;
            need = need.saturating_sub(n * unit);
        }
        // Demand that nothing in flight, planned, or room left on ENIs busy or being created
        // (taken in a later round) can meet: say why, so those waiters fail fast.
        let servable = idle
            + incoming
            + planned_shared(&plan.actions)
            + room_later(state, input.limits, &plan.actions, unit);
        if input.waiting_shared > servable && plan.blocked.is_none() {
            if subnets_out {
                plan.blocked = Some(Blocked::SubnetsExhausted {
                    subnets: input.subnets.iter().map(|s| s.id.clone()).collect(),
                });
            } else if enis_used >= input.limits.max_enis {
                plan.blocked = Some(Blocked::EniLimit {
                    max_enis: input.limits.max_enis,
                    max_pods: input.limits.max_shared_pods(),
                });
            }
        }
    }
    plan.servable = idle
        + incoming
        + planned_shared(&plan.actions)
        + room_later(state, input.limits, &plan.actions, unit);

    // Release surplus, only when nothing waits and nothing is being added.
    if input.waiting_shared == 0 && incoming == 0 && need == 0 {
        release_shared(input, &busy, idle, total, &mut plan);
    }
    if input.waiting_exclusive == 0 {
        let mut surplus = idle_excl.saturating_sub(t.exclusive_warm);
        for eni in state.idle_exclusive() {
            if surplus == 0 {
                break;
            }
            if cooled(input, eni.primary_ip) {
                plan.actions.push(Action::RemoveEni {
                    eni_id: eni.id.clone(),
                });
                surplus -= 1;
            }
        }
    }
    plan
}

/// The subnet for a new ENI that should hold `want` address units (none for an exclusive ENI):
/// the first, in order of preference, that is not blocked and has room for all of them (its
/// primary address included); else the one with the most room for at least one. Returns it
/// with how many units fit, and takes the ENI's addresses from its count. A subnet whose
/// count is unknown takes anything.
fn pick_subnet(subnets: &mut [SubnetChoice], want: u32, unit: u32) -> Option<(String, u32)> {
    let full = 1 + u64::from(want * unit);
    let least = 1 + u64::from(want.min(1) * unit);
    let idx = subnets
        .iter()
        .position(|s| !s.blocked && s.available.is_none_or(|a| a >= full))
        .or_else(|| {
            subnets
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.blocked && s.available.is_some_and(|a| a >= least))
                .max_by_key(|(i, s)| (s.available, std::cmp::Reverse(*i)))
                .map(|(i, _)| i)
        })?;
    let choice = &mut subnets[idx];
    let fit = match choice.available.as_mut() {
        Some(a) => {
            let fit = want.min(u32::try_from((*a - 1) / u64::from(unit)).unwrap_or(u32::MAX));
            *a -= 1 + u64::from(fit * unit);
            fit
        }
        None => want,
    };
    Some((choice.id.clone(), fit))
}

/// Shared addresses the planned actions add.
fn planned_shared(actions: &[Action]) -> u32 {
    actions
        .iter()
        .map(|a| match a {
            Action::Assign { ips, prefixes, .. }
            | Action::CreateEni {
                kind: EniKind::Shared,
                ips,
                prefixes,
                ..
            } => ips + prefixes * PREFIX_SIZE,
            _ => 0,
        })
        .sum()
}

/// Addresses that shared ENIs attached or being created can still take in a later round,
/// beyond what is in flight or planned now (an ENI is never given two operations at once, so a
/// busy ENI's room waits for the next round).
fn room_later(state: &PoolState, limits: Limits, planned: &[Action], unit: u32) -> u32 {
    let per_eni = limits.ipv4_per_eni.saturating_sub(1);
    let mut pending: BTreeMap<&str, u32> = BTreeMap::new();
    for i in state.intents.values() {
        if let Intent::Assign {
            eni_id,
            ips,
            prefixes,
            ..
        } = i
        {
            *pending.entry(eni_id.as_str()).or_default() += ips + prefixes;
        }
    }
    let mut creating = 0;
    for a in planned {
        match a {
            Action::Assign {
                eni_id,
                ips,
                prefixes,
            } => *pending.entry(eni_id.as_str()).or_default() += ips + prefixes,
            Action::CreateEni {
                kind: EniKind::Shared,
                ips,
                prefixes,
                ..
            } => creating += per_eni.saturating_sub(ips + prefixes),
            _ => {}
        }
    }
    for i in state.intents.values() {
        if let Intent::CreateEni {
            kind: EniKind::Shared,
            ips,
            prefixes,
            ..
        } = i
        {
            creating += per_eni.saturating_sub(ips + prefixes);
        }
    }
    let ready: u32 = state
        .enis
        .values()
        .filter(|e| e.kind == EniKind::Shared && e.phase == EniPhase::Ready)
        .map(|e| {
            limits
                .ipv4_per_eni
                .saturating_sub(e.slots_used() + pending.get(e.id.as_str()).copied().unwrap_or(0))
        })
        .sum();
    (ready + creating) * unit
}

fn cooled(input: &PlanInput<'_>, ip: Ipv4Addr) -> bool {
    input
        .idle_since
        .get(&ip)
        .is_some_and(|since| since + input.targets.release_cooldown_ms <= input.now_ms)
}

fn release_shared(
    input: &PlanInput<'_>,
    busy: &BTreeSet<&str>,
    idle: u32,
    total: u32,
    plan: &mut Plan,
) {
    let t = input.targets;
    let state = input.state;
    let mut surplus = idle
        .saturating_sub(t.max_idle)
        .min(total.saturating_sub(t.min_total));
    if surplus == 0 {
        return;
    }
    let idle_by_eni: BTreeMap<&str, BTreeSet<Ipv4Addr>> =
        state
            .idle_ips()
            .into_iter()
            .fold(BTreeMap::new(), |mut m, (ip, e)| {
                m.entry(e.id.as_str()).or_default().insert(ip);
                m
            });
    let allocated_on = |id: &str| {
        state
            .allocations
            .values()
            .filter(|a| a.eni_id == id)
            .count()
    };
    // Whole ENIs first: no pod on them, every address cooled, all of it surplus.
    let mut candidates: Vec<&EniRecord> = state
        .enis
        .values()
        .filter(|e| e.kind == EniKind::Shared && e.phase == EniPhase::Ready)
        .filter(|e| !busy.contains(e.id.as_str()) && allocated_on(&e.id) == 0)
        .collect();
    candidates.sort_by_key(|e| (e.ips.len(), std::cmp::Reverse(e.device_index)));
    // `removed` also holds ENIs that would go whole but whose addresses have not all cooled
    // yet: their share of the surplus is kept for them, so that trimming other addresses now
    // does not leave them half drained, each still an ENI, once they cool.
    let mut removed = BTreeSet::new();
    for eni in candidates {
        let n = eni.ips.len() as u32;
        if n <= surplus {
            if eni.ips.iter().all(|ip| cooled(input, *ip)) {
                plan.actions.push(Action::RemoveEni {
                    eni_id: eni.id.clone(),
                });
            }
            removed.insert(eni.id.as_str());
            surplus -= n;
        }
    }
    if surplus == 0 {
        return;
    }
    // Then addresses, from the ENIs with the fewest pods (to drain them).
    let mut enis: Vec<(&str, &BTreeSet<Ipv4Addr>)> = idle_by_eni
        .iter()
        .filter(|(id, _)| !busy.contains(*id) && !removed.contains(*id))
        .map(|(id, ips)| (*id, ips))
        .collect();
    enis.sort_by_key(|(id, _)| allocated_on(id));
    for (id, ips) in enis {
        if surplus == 0 {
            break;
        }
        let eni = &state.enis[id];
        let mut take_ips = BTreeSet::new();
        let mut take_prefixes = BTreeSet::new();
        if t.prefix_mode {
            for p in &eni.prefixes {
                let members: Vec<Ipv4Addr> = eni
                    .ips
                    .iter()
                    .filter(|ip| p.contains(*ip))
                    .copied()
                    .collect();
                if surplus >= members.len() as u32
                    && members
                        .iter()
                        .all(|ip| ips.contains(ip) && cooled(input, *ip))
                    && take_prefixes.len() < MAX_PER_ASSIGN as usize
                {
                    surplus -= members.len() as u32;
                    take_prefixes.insert(*p);
                    take_ips.extend(members);
                }
            }
        } else {
            for ip in ips.iter().filter(|ip| cooled(input, **ip)) {
                if surplus == 0 || take_ips.len() >= MAX_PER_UNASSIGN {
                    break;
                }
                take_ips.insert(*ip);
                surplus -= 1;
            }
        }
        if !take_ips.is_empty() {
            plan.actions.push(Action::Unassign {
                eni_id: id.to_string(),
                ips: take_ips,
                prefixes: take_prefixes,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::state::{AllocKey, AllocRecord, Event};

    fn targets() -> PoolTargets {
        PoolTargets {
            fill_new_enis: false,
            min_idle: 2,
            max_idle: 5,
            min_total: 0,
            release_cooldown_ms: 1000,
            prefix_mode: false,
            exclusive_warm: 0,
        }
    }

    const LIMITS: Limits = Limits {
        max_enis: 3,
        ipv4_per_eni: 10,
    };

    fn subnets() -> Vec<SubnetChoice> {
        vec![
            SubnetChoice {
                id: "vsw-a".into(),
                available: Some(100),
                blocked: false,
            },
            SubnetChoice {
                id: "vsw-b".into(),
                available: Some(50),
                blocked: false,
            },
        ]
    }

    fn eni(id: &str, index: u32, n_ips: u32) -> EniRecord {
        EniRecord {
            id: id.into(),
            mac: format!("00:16:3e:00:00:{index:02x}"),
            kind: EniKind::Shared,
            phase: EniPhase::Ready,
            subnet_id: "vsw-a".into(),
            cidr: "10.0.0.0/16".parse().unwrap(),
            gateway: "10.0.255.253".parse().unwrap(),
            primary_ip: Ipv4Addr::new(10, 0, index as u8, 100),
            device_index: Some(index),
            attachment_id: None,
            host_ifname: None,
            route_table: 1000 + index,
            ips: (1..=n_ips)
                .map(|i| Ipv4Addr::new(10, 0, index as u8, i as u8))
                .collect(),
            prefixes: BTreeSet::new(),
        }
    }

    fn run(state: &PoolState, waiting: u32, idle_since: &HashMap<Ipv4Addr, u64>, now: u64) -> Plan {
        let t = targets();
        let s = subnets();
        plan(&PlanInput {
            state,
            limits: LIMITS,
            targets: &t,
            waiting_shared: waiting,
            waiting_exclusive: 0,
            idle_since,
            now_ms: now,
            subnets: &s,
        })
    }

    fn allocate(state: &mut PoolState, n: usize) {
        let idle: Vec<(Ipv4Addr, String)> = state
            .idle_ips()
            .into_iter()
            .take(n)
            .map(|(ip, e)| (ip, e.id.clone()))
            .collect();
        for (i, (ip, eni)) in idle.into_iter().enumerate() {
            state
                .apply(&Event::Allocated(AllocRecord {
                    key: AllocKey {
                        container_id: format!("c{}-{i}", ip),
                        ifname: "eth0".into(),
                    },
                    ip,
                    eni_id: eni,
                    netns: String::new(),
                    pod: None,
                    exclusive: false,
                    at_ms: 0,
                    host_ports: Vec::new(),
                }))
                .unwrap();
        }
    }

    #[test]
    fn a_cold_node_creates_one_eni_holding_the_whole_demand() {
        let p = run(&PoolState::default(), 5, &HashMap::new(), 0);
        assert_eq!(
            p.actions,
            vec![Action::CreateEni {
                subnet_id: "vsw-a".into(),
                kind: EniKind::Shared,
                ips: 7,
                prefixes: 0
            }]
        );
        assert_eq!(p.blocked, None);
    }

    /// [`plan`] with `fill_new_enis` on, over `subnets`.
    fn run_filling(state: &PoolState, waiting: u32, subnets: &[SubnetChoice]) -> Plan {
        let t = PoolTargets {
            fill_new_enis: true,
            ..targets()
        };
        plan(&PlanInput {
            state,
            limits: LIMITS,
            targets: &t,
            waiting_shared: waiting,
            waiting_exclusive: 0,
            idle_since: &HashMap::new(),
            now_ms: 0,
            subnets,
        })
    }

    fn creating(ips: u32) -> Event {
        Event::IntentStarted {
            op: 1,
            intent: Intent::CreateEni {
                token: "t".into(),
                subnet_id: "vsw-a".into(),
                kind: EniKind::Shared,
                ips,
                prefixes: 0,
            },
        }
    }

    #[test]
    fn filling_creates_a_whole_eni_for_the_first_waiters_and_nothing_for_the_next_ones() {
        // Round 1: 3 pods wait. Without filling the ENI gets 3 + the idle target; with it, 9.
        let p = run(&PoolState::default(), 3, &HashMap::new(), 0);
        assert!(
            matches!(p.actions[..], [Action::CreateEni { ips: 5, .. }]),
            "{p:?}"
        );
        let p = run_filling(&PoolState::default(), 3, &subnets());
        assert!(
            matches!(p.actions[..], [Action::CreateEni { ips: 9, .. }]),
            "{p:?}"
        );
        // Round 2, the create in flight: 4 more pods (7 waiting) fit in what is coming, so
        // no create and, once it is attached, no top-up.
        let mut s = PoolState::default();
        s.apply(&creating(9)).unwrap();
        let p = run_filling(&s, 7, &subnets());
        assert!(p.actions.is_empty(), "{p:?}");
    }

    #[test]
    fn filling_stops_at_the_subnet_and_the_eni_limit_and_not_without_waiters() {
        // The subnet has room for the ENI's primary and 4 more: the create carries 4.
        let small = vec![SubnetChoice {
            id: "vsw-a".into(),
            available: Some(5),
            blocked: false,
        }];
        let p = run_filling(&PoolState::default(), 2, &small);
        assert!(
            matches!(p.actions[..], [Action::CreateEni { ips: 4, .. }]),
            "{p:?}"
        );
        // 40 waiting: both ENI slots, each full, the rest blocked by the ENI limit.
        let p = run_filling(&PoolState::default(), 40, &subnets());
        assert_eq!(p.actions.len(), 2);
        assert!(p
            .actions
            .iter()
            .all(|a| matches!(a, Action::CreateEni { ips: 9, .. })));
        // Nobody waiting (a warm-up to min_idle): only what the watermark asks.
        let p = run_filling(&PoolState::default(), 0, &subnets());
        assert!(
            matches!(p.actions[..], [Action::CreateEni { ips: 2, .. }]),
            "{p:?}"
        );
    }

    #[test]
    fn a_burst_beyond_one_eni_creates_more_up_to_the_limit() {
        let p = run(&PoolState::default(), 40, &HashMap::new(), 0);
        // 2 secondary ENIs x 9 addresses = 18 < 42: both created, and the rest is blocked.
        assert_eq!(p.actions.len(), 2);
        assert!(p
            .actions
            .iter()
            .all(|a| matches!(a, Action::CreateEni { ips: 9, .. })));
        assert_eq!(
            p.blocked,
            Some(Blocked::EniLimit {
                max_enis: 3,
                max_pods: 18
            })
        );
    }

    #[test]
    fn attached_enis_are_filled_before_creating_and_in_batches_of_ten() {
        let mut s = PoolState::default();
        s.apply(&Event::EniReady(eni("eni-1", 1, 0))).unwrap();
        let p = run(&s, 0, &HashMap::new(), 0);
        assert_eq!(
            p.actions,
            vec![Action::Assign {
                eni_id: "eni-1".into(),
                ips: 2,
                prefixes: 0
            }]
        );
        let p = run(&s, 12, &HashMap::new(), 0);
        assert_eq!(
            p.actions[0],
            Action::Assign {
                eni_id: "eni-1".into(),
                ips: 9,
                prefixes: 0
            }
        );
        assert!(matches!(p.actions[1], Action::CreateEni { ips: 5, .. }));
    }

    #[test]
    fn in_flight_work_counts_and_busy_enis_get_nothing_more() {
        let mut s = PoolState::default();
        s.apply(&Event::EniReady(eni("eni-1", 1, 0))).unwrap();
        s.apply(&Event::IntentStarted {
            op: 1,
            intent: Intent::Assign {
                eni_id: "eni-1".into(),
                token: "t".into(),
                ips: 2,
                prefixes: 0,
            },
        })
        .unwrap();
        assert_eq!(run(&s, 0, &HashMap::new(), 0).actions, vec![]);
        // More demand that eni-1 can still hold (9 slots, 2 coming): nothing new now, it is
        // topped up when its assign finishes.
        let p = run(&s, 3, &HashMap::new(), 0);
        assert_eq!(p.actions, vec![], "{p:?}");
        assert_eq!(p.blocked, None);
        // Demand beyond what it can hold: a new ENI for the rest only.
        let p = run(&s, 12, &HashMap::new(), 0);
        // want 14 idle, 2 coming, 7 more fit on eni-1: create with 5.
        assert!(
            matches!(&p.actions[..], [Action::CreateEni { ips: 5, .. }]),
            "{p:?}"
        );
    }

    #[test]
    fn room_on_an_eni_being_created_is_not_the_eni_limit() {
        // The warm-up create (2 addresses) is in flight; a burst then fills the other ENI
        // slot. The created ENI still has room for 7 more: the burst waits, it is not "full".
        let mut s = PoolState::default();
        s.apply(&Event::IntentStarted {
            op: 1,
            intent: Intent::CreateEni {
                token: "t".into(),
                subnet_id: "vsw-a".into(),
                kind: EniKind::Shared,
                ips: 2,
                prefixes: 0,
            },
        })
        .unwrap();
        // Want 16 idle: 2 coming and room for 7 more on the ENI being created, so a new ENI
        // for the other 7 only.
        let p = run(&s, 14, &HashMap::new(), 0);
        assert!(
            matches!(&p.actions[..], [Action::CreateEni { ips: 7, .. }]),
            "{p:?}"
        );
        assert_eq!(p.blocked, None, "{p:?}");
        assert_eq!(p.servable, 2 + 7 + 7 + 2);
        // Beyond every slot of the node it is.
        let p = run(&s, 19, &HashMap::new(), 0);
        assert!(matches!(p.blocked, Some(Blocked::EniLimit { .. })), "{p:?}");
        assert_eq!(p.servable, 18);
    }

    fn run_with(state: &PoolState, waiting: u32, subnets: &[SubnetChoice]) -> Plan {
        let t = targets();
        plan(&PlanInput {
            state,
            limits: LIMITS,
            targets: &t,
            waiting_shared: waiting,
            waiting_exclusive: 0,
            idle_since: &HashMap::new(),
            now_ms: 0,
            subnets,
        })
    }

    #[test]
    fn a_subnet_gets_no_more_addresses_than_it_has() {
        let s = vec![
            SubnetChoice {
                id: "vsw-a".into(),
                available: Some(4),
                blocked: false,
            },
            SubnetChoice {
                id: "vsw-b".into(),
                available: Some(50),
                blocked: false,
            },
        ];
        // vsw-a cannot hold a full ENI: vsw-b takes it; the remainder fits vsw-a.
        let p = run_with(&PoolState::default(), 10, &s);
        assert_eq!(
            p.actions,
            vec![
                Action::CreateEni {
                    subnet_id: "vsw-b".into(),
                    kind: EniKind::Shared,
                    ips: 9,
                    prefixes: 0
                },
                Action::CreateEni {
                    subnet_id: "vsw-a".into(),
                    kind: EniKind::Shared,
                    ips: 3,
                    prefixes: 0
                },
            ]
        );
        // When no subnet has room for a full ENI, the one with the most room gets what fits.
        let small = vec![
            SubnetChoice {
                id: "vsw-a".into(),
                available: Some(3),
                blocked: false,
            },
            SubnetChoice {
                id: "vsw-b".into(),
                available: Some(5),
                blocked: false,
            },
        ];
        let p = run_with(&PoolState::default(), 20, &small);
        assert!(
            matches!(&p.actions[..], [Action::CreateEni { subnet_id: b, ips: 4, .. }, Action::CreateEni { subnet_id: a, ips: 2, .. }] if b == "vsw-b" && a == "vsw-a"),
            "{p:?}"
        );
        // An ENI in a blocked subnet is not topped up; its neighbour's subnet is used.
        let mut state = PoolState::default();
        let mut e = eni("eni-1", 1, 2);
        e.subnet_id = "vsw-a".into();
        state.apply(&Event::EniReady(e)).unwrap();
        let mut s = s;
        s[0].blocked = true;
        let p = run_with(&state, 4, &s);
        assert!(
            matches!(&p.actions[..], [Action::CreateEni { subnet_id, ips: 4, .. }] if subnet_id == "vsw-b"),
            "{p:?}"
        );
    }

    #[test]
    fn exhausted_subnets_are_skipped_then_reported() {
        let t = targets();
        let s = vec![
            SubnetChoice {
                id: "vsw-a".into(),
                available: Some(0),
                blocked: false,
            },
            SubnetChoice {
                id: "vsw-b".into(),
                available: Some(10),
                blocked: true,
            },
        ];
        let state = PoolState::default();
        let p = plan(&PlanInput {
            state: &state,
            limits: LIMITS,
            targets: &t,
            waiting_shared: 1,
            waiting_exclusive: 0,
            idle_since: &HashMap::new(),
            now_ms: 0,
            subnets: &s,
        });
        assert!(p.actions.is_empty());
        assert!(matches!(p.blocked, Some(Blocked::SubnetsExhausted { .. })));
    }

    #[test]
    fn surplus_is_released_after_the_cooldown_whole_enis_first() {
        let mut s = PoolState::default();
        s.apply(&Event::EniReady(eni("eni-1", 1, 9))).unwrap();
        s.apply(&Event::EniReady(eni("eni-2", 2, 4))).unwrap();
        allocate(&mut s, 3); // 3 pods on eni-1: idle 6 + 4 = 10, max 5
        let since: HashMap<Ipv4Addr, u64> =
            s.idle_ips().into_iter().map(|(ip, _)| (ip, 0)).collect();
        assert_eq!(run(&s, 0, &since, 500).actions, vec![], "not cooled yet");
        let p = run(&s, 0, &since, 1000);
        assert_eq!(
            p.actions[0],
            Action::RemoveEni {
                eni_id: "eni-2".into()
            }
        );
        match &p.actions[1] {
            Action::Unassign { eni_id, ips, .. } => {
                assert_eq!(eni_id, "eni-1");
                assert_eq!(ips.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        // Nothing is released while a pod waits.
        assert!(run(&s, 1, &since, 1000)
            .actions
            .iter()
            .all(|a| !matches!(a, Action::Unassign { .. } | Action::RemoveEni { .. })));
    }

    #[test]
    fn an_eni_that_will_go_whole_is_not_drained_while_it_cools() {
        let mut s = PoolState::default();
        s.apply(&Event::EniReady(eni("eni-1", 1, 9))).unwrap();
        s.apply(&Event::EniReady(eni("eni-2", 2, 4))).unwrap();
        allocate(&mut s, 3); // 3 pods on eni-1: idle 6 + 4 = 10, max 5, surplus 5
                             // eni-1's idle addresses cooled long ago; one of eni-2's was freed just now.
        let mut since: HashMap<Ipv4Addr, u64> =
            s.idle_ips().into_iter().map(|(ip, _)| (ip, 0)).collect();
        let late = *s.enis["eni-2"].ips.iter().next().unwrap();
        since.insert(late, 900);
        // eni-2 keeps 4 of the surplus for itself; only 1 address of eni-1 goes now.
        let p = run(&s, 0, &since, 1000);
        assert_eq!(p.actions.len(), 1, "{p:?}");
        match &p.actions[0] {
            Action::Unassign { eni_id, ips, .. } => {
                assert_eq!(eni_id, "eni-1");
                assert_eq!(ips.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        // Once it has cooled, eni-2 goes whole.
        let p = run(&s, 0, &since, 1900);
        assert!(
            p.actions.contains(&Action::RemoveEni {
                eni_id: "eni-2".into()
            }),
            "{p:?}"
        );
    }

    #[test]
    fn min_total_keeps_addresses_even_when_idle() {
        let mut s = PoolState::default();
        s.apply(&Event::EniReady(eni("eni-1", 1, 9))).unwrap();
        let since: HashMap<Ipv4Addr, u64> =
            s.idle_ips().into_iter().map(|(ip, _)| (ip, 0)).collect();
        let mut t = targets();
        t.min_total = 8;
        let sn = subnets();
        let p = plan(&PlanInput {
            state: &s,
            limits: LIMITS,
            targets: &t,
            waiting_shared: 0,
            waiting_exclusive: 0,
            idle_since: &since,
            now_ms: 10_000,
            subnets: &sn,
        });
        match &p.actions[..] {
            [Action::Unassign { ips, .. }] => assert_eq!(ips.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prefix_mode_asks_for_prefixes() {
        let mut t = targets();
        t.prefix_mode = true;
        t.min_idle = 20;
        let sn = subnets();
        let state = PoolState::default();
        let p = plan(&PlanInput {
            state: &state,
            limits: LIMITS,
            targets: &t,
            waiting_shared: 0,
            waiting_exclusive: 0,
            idle_since: &HashMap::new(),
            now_ms: 0,
            subnets: &sn,
        });
        assert_eq!(
            p.actions,
            vec![Action::CreateEni {
                subnet_id: "vsw-a".into(),
                kind: EniKind::Shared,
                ips: 0,
                prefixes: 2
            }]
        );
    }

    #[test]
    fn exclusive_demand_creates_bare_enis() {
        let t = targets();
        let sn = subnets();
        let state = PoolState::default();
        let p = plan(&PlanInput {
            state: &state,
            limits: LIMITS,
            targets: &t,
            waiting_shared: 0,
            waiting_exclusive: 1,
            idle_since: &HashMap::new(),
            now_ms: 0,
            subnets: &sn,
        });
        assert_eq!(
            p.actions[0],
            Action::CreateEni {
                subnet_id: "vsw-a".into(),
                kind: EniKind::Exclusive,
                ips: 0,
                prefixes: 0
            }
        );
    }
}
