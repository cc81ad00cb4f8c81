//! The order in which waiting leases are considered: priority, ageing and weighted fair share
//! between tenants, combined into one urgency (as Slurm's multifactor priority does):
//!
//! `urgency = priority + min(minutes waited, 100) + 100 × 2^(−used ÷ entitled)`
//!
//! - `priority` is the caller's, 0 to 100;
//! - ageing adds a point per minute waited, so even priority 0 overtakes a fresh priority 100
//!   after 100 minutes: nothing starves;
//! - `used` is the tenant's part of the leases held right now, `entitled` its weight's part
//!   of the weights of the tenants holding or waiting. A tenant holding nothing gets 100, one
//!   at exactly its share 50, one holding twice its share 25.
//!
//! The fair-share term changes as leases are granted, so the order is not a sort: [`Queue`]
//! picks the most urgent head among the tenants, one lease at a time.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::LeaseId;

/// A waiting lease.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub id: LeaseId,
    pub tenant: String,
    pub priority: i32,
    pub queued_at: DateTime<Utc>,
}

/// The most minutes of waiting that count.
const MAX_AGEING: f64 = 100.0;

fn base_urgency(w: &Waiting, now: DateTime<Utc>) -> f64 {
    let waited = (now - w.queued_at).num_seconds().max(0) as f64 / 60.0;
    w.priority as f64 + waited.min(MAX_AGEING)
}

struct Tenant {
    name: String,
    weight: f64,
    held: f64,
    /// Its waiting leases, most urgent last (popped from the end).
    waiting: Vec<(f64, Waiting)>,
}

/// Waiting leases in the order they should be tried.
pub struct Queue {
    tenants: Vec<Tenant>,
    total_held: f64,
    total_weight: f64,
}

impl Queue {
    /// `held` is how many leases each tenant holds now; `weight` a tenant's weight (1 when not
    /// configured).
    pub fn new(
        waiting: Vec<Waiting>,
        held: &HashMap<String, i64>,
        weight: impl Fn(&str) -> f64,
        now: DateTime<Utc>,
    ) -> Self {
        let mut by_tenant: HashMap<String, Tenant> = HashMap::new();
        for (name, count) in held {
            let tenant = Tenant { name: name.clone(), weight: weight(name), held: *count as f64, waiting: Vec::new() };
            by_tenant.insert(name.clone(), tenant);
        }
        for w in waiting {
            let urgency = base_urgency(&w, now);
            by_tenant
                .entry(w.tenant.clone())
                .or_insert_with(|| Tenant {
                    name: w.tenant.clone(),
                    weight: weight(&w.tenant),
                    held: 0.0,
                    waiting: Vec::new(),
                })
                .waiting
                .push((urgency, w));
        }
        let mut tenants: Vec<Tenant> = by_tenant.into_values().collect();
        for t in &mut tenants {
            // Least urgent first, so the most urgent pops off the end; older first among equals.
            t.waiting.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.queued_at.cmp(&a.1.queued_at)));
        }
        let total_held = tenants.iter().map(|t| t.held).sum();
        let total_weight = tenants.iter().map(|t| t.weight).sum();
        Queue { tenants, total_held, total_weight }
    }

    fn fair_share(&self, t: &Tenant) -> f64 {
        let used = if self.total_held > 0.0 { t.held / self.total_held } else { 0.0 };
        let entitled = if self.total_weight > 0.0 { t.weight / self.total_weight } else { 1.0 };
        100.0 * (-used / entitled).exp2()
    }

    /// The next lease to try, taken out of the queue. Call [`granted`](Self::granted) if it
    /// got a machine; otherwise it is simply passed over this round.
    pub fn pop_next(&mut self) -> Option<Waiting> {
        let best = (0..self.tenants.len())
            .filter_map(|i| {
                let t = &self.tenants[i];
                let (urgency, head) = t.waiting.last()?;
                Some((i, urgency + self.fair_share(t), head.queued_at))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.2.cmp(&a.2)))?;
        self.tenants[best.0].waiting.pop().map(|(_, w)| w)
    }

    /// The lease last returned by [`pop_next`](Self::pop_next) was granted: its tenant now holds one more.
    pub fn granted(&mut self, tenant: &str) {
        if let Some(t) = self.tenants.iter_mut().find(|t| t.name == tenant) {
            t.held += 1.0;
            self.total_held += 1.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(tenant: &str, priority: i32, queued_at: DateTime<Utc>) -> Waiting {
        Waiting { id: LeaseId::generate(), tenant: tenant.into(), priority, queued_at }
    }

    /// Grants `slots` leases from the queue and counts them per tenant.
    fn grant(queue: &mut Queue, slots: usize) -> HashMap<String, usize> {
        let mut got = HashMap::new();
        for _ in 0..slots {
            let w = queue.pop_next().expect("someone is waiting");
            queue.granted(&w.tenant);
            *got.entry(w.tenant).or_default() += 1;
        }
        got
    }

    #[test]
    fn two_tenants_of_equal_weight_share_evenly_whoever_queued_first() {
        let now = Utc::now();
        let mut all: Vec<Waiting> = (0..100).map(|_| waiting("sig-a", 50, now)).collect();
        all.extend((0..100).map(|_| waiting("sig-b", 50, now)));
        let mut queue = Queue::new(all, &HashMap::new(), |_| 1.0, now);
        let got = grant(&mut queue, 20);
        assert_eq!((got["sig-a"], got["sig-b"]), (10, 10));
    }

    #[test]
    fn weights_set_the_shares_and_current_holdings_count() {
        let now = Utc::now();
        let mut all: Vec<Waiting> = (0..100).map(|_| waiting("heavy", 50, now)).collect();
        all.extend((0..100).map(|_| waiting("light", 50, now)));
        let weight = |t: &str| if t == "heavy" { 2.0 } else { 1.0 };
        let mut queue = Queue::new(all.clone(), &HashMap::new(), weight, now);
        let got = grant(&mut queue, 30);
        assert!((19..=21).contains(&got["heavy"]), "two thirds to the heavier tenant: {got:?}");

        // A tenant already holding ten leases waits while the other catches up.
        let held = HashMap::from([("heavy".to_string(), 20)]);
        let mut queue = Queue::new(all, &held, weight, now);
        let got = grant(&mut queue, 10);
        assert_eq!(got.get("heavy"), None);
    }

    #[test]
    fn priority_orders_within_a_tenant_and_ageing_lets_the_lowest_through() {
        let now = Utc::now();
        let low = waiting("sig-a", 0, now - chrono::Duration::minutes(5));
        let high = waiting("sig-a", 90, now);
        let mut queue = Queue::new(vec![low.clone(), high.clone()], &HashMap::new(), |_| 1.0, now);
        assert_eq!(queue.pop_next().unwrap().id, high.id);

        let starved = waiting("sig-a", 0, now - chrono::Duration::minutes(120));
        let mut queue = Queue::new(vec![high.clone(), starved.clone()], &HashMap::new(), |_| 1.0, now);
        assert_eq!(queue.pop_next().unwrap().id, starved.id, "120 minutes of waiting outweigh 90 points");
    }

    #[test]
    fn among_equals_the_oldest_goes_first() {
        let now = Utc::now();
        let first = waiting("sig-a", 50, now - chrono::Duration::seconds(10));
        let second = waiting("sig-a", 50, now - chrono::Duration::seconds(5));
        let mut queue = Queue::new(vec![second.clone(), first.clone()], &HashMap::new(), |_| 1.0, now);
        // Ageing gives the older a sliver more urgency.
        assert_eq!(queue.pop_next().unwrap().id, first.id);
        assert_eq!(queue.pop_next().unwrap().id, second.id);
        assert!(queue.pop_next().is_none());
    }
}
