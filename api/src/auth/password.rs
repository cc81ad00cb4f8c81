//! Password hashing with Argon2id (the crate's default parameters), off the async threads.

use std::sync::OnceLock;

use anyhow::Context;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};

/// Passwords shorter than this are refused when set.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Hashes a password into a PHC string.
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || hash_now(&password)).await.context("password hashing task")?
}

fn hash_now(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
}

/// Whether `password` matches `hash`. With no hash (unknown account) the same work is done
/// against a dummy hash, so response time does not reveal which emails have accounts.
pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let hash = hash.as_deref().unwrap_or_else(|| dummy_hash());
        let matched = Argon2::default().verify_password(password.as_bytes(), hash).is_ok();
        matched && hash != dummy_hash()
    })
    .await
    .unwrap_or(false)
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_now("fleetyard-dummy-password").expect("hashing a constant"))
}

/// Bounds the password hashing a replica does: at most `concurrency` hashes at once and
/// `queue` more waiting; beyond that, callers are turned away at once, so a flood of logins
/// costs neither unbounded memory (each Argon2id hash takes about 19 MiB) nor every core.
#[derive(Debug)]
pub struct PasswordGate {
    permits: tokio::sync::Semaphore,
    /// Hashes running or waiting.
    admitted: std::sync::atomic::AtomicUsize,
    limit: usize,
}

/// The gate is full: try again in a moment.
#[derive(Debug, Clone, Copy)]
pub struct GateFull;

impl PasswordGate {
    pub fn new(concurrency: usize, queue: usize) -> Self {
        Self {
            permits: tokio::sync::Semaphore::new(concurrency),
            admitted: std::sync::atomic::AtomicUsize::new(0),
            limit: concurrency + queue,
        }
    }

    /// Whether `password` matches `hash` (as [`verify_password`]), within the bound.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, GateFull> {
        let _turn = self.enter().await?;
        Ok(verify_password(password, hash).await)
    }

    /// Hashes `password` (as [`hash_password`]), within the bound.
    pub async fn hash(&self, password: String) -> Result<anyhow::Result<String>, GateFull> {
        let _turn = self.enter().await?;
        Ok(hash_password(password).await)
    }

    async fn enter(&self) -> Result<Turn<'_>, GateFull> {
        use std::sync::atomic::Ordering;
        if self.admitted.fetch_add(1, Ordering::SeqCst) >= self.limit {
            self.admitted.fetch_sub(1, Ordering::SeqCst);
            return Err(GateFull);
        }
        let admitted = Admitted(&self.admitted);
        let permit = self.permits.acquire().await.map_err(|_| GateFull)?;
        Ok(Turn { _permit: permit, _admitted: admitted })
    }
}

/// One admitted hash: counted until dropped (also when its caller gives up waiting).
struct Admitted<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

struct Turn<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    _admitted: Admitted<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_gate_turns_away_what_it_has_no_room_for_and_lets_it_in_again_later() {
        let gate = std::sync::Arc::new(PasswordGate::new(1, 1));
        let hash = hash_password("long enough password".into()).await.unwrap();
        let attempts: Vec<_> = (0..6)
            .map(|_| {
                let (gate, hash) = (gate.clone(), hash.clone());
                tokio::spawn(async move { gate.verify("long enough password".into(), Some(hash)).await })
            })
            .collect();
        let mut answered = 0;
        let mut turned_away = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(matched) => {
                    assert!(matched);
                    answered += 1;
                }
                Err(GateFull) => turned_away += 1,
            }
        }
        assert!(answered >= 2 && turned_away >= 1, "answered {answered}, turned away {turned_away}");
        assert!(gate.verify("long enough password".into(), Some(hash)).await.unwrap());
    }
}
