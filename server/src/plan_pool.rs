//! A small bounded pool for the CPU-heavy part of Plan and Apply (validating a change set of
//! up to 20,000 resources, planning its effect on every device). The work runs on tokio's
//! blocking threads, never on the async workers that serve Get, List and agent reports, and
//! only `PLAN_WORKERS` jobs run at once; up to `PLAN_QUEUE` more wait, beyond that a request
//! is refused at once as "planner busy" (RESOURCE_EXHAUSTED) rather than piling up. One
//! principal may hold at most `PER_PRINCIPAL` of those places (one running, one waiting), so a
//! viewer sending Plans in a loop cannot keep an admin's Apply out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::model::ApiError;

/// Jobs running at once: one core stays free for the async workers on a small machine.
pub const PLAN_WORKERS: usize = 1;
/// Jobs that may wait for a worker; one more is refused.
pub const PLAN_QUEUE: usize = 8;
/// Jobs one principal may have admitted (running or waiting) at once: one running and one
/// waiting, so others always find a place while fewer than five principals compete.
pub const PER_PRINCIPAL: usize = 2;

/// Runs planner jobs on the blocking threads, at most `PLAN_WORKERS` at a time.
#[derive(Debug, Clone)]
pub struct PlanPool {
    permits: Arc<Semaphore>,
    /// Jobs admitted and not finished (waiting or running).
    admitted: Arc<AtomicUsize>,
    /// The same per principal (only principals with a job admitted are in it).
    by_principal: Arc<Mutex<HashMap<String, usize>>>,
}

impl Default for PlanPool {
    fn default() -> Self {
        Self {
            permits: Arc::new(Semaphore::new(PLAN_WORKERS)),
            admitted: Arc::new(AtomicUsize::new(0)),
            by_principal: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// Counts a job as admitted until it is dropped (finished, or its request went away).
struct Admitted {
    total: Arc<AtomicUsize>,
    by_principal: Arc<Mutex<HashMap<String, usize>>>,
    who: String,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        let mut m = self
            .by_principal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.who) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.who);
            }
        }
    }
}

impl PlanPool {
    /// Runs `job` on a blocking thread once a worker is free. The permit moves into the job,
    /// so a client that gives up does not free a worker that is still busy with its work.
    /// `who` is the principal it runs for (see `PER_PRINCIPAL`).
    pub async fn run<T, F>(&self, who: &str, what: &str, job: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    {
        let admitted = self.admit(who)?;
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|e| ApiError::Internal(format!("planner pool closed: {e}")))?;
        tokio::task::spawn_blocking(move || {
            let _held = (permit, admitted);
            job()
        })
        .await
        .map_err(|e| ApiError::Internal(format!("{what} task failed: {e}")))?
    }

    /// Runs `job` as a task holding a worker until it ends, for work split between this pool
    /// and another thread (a plan's preparation here, then its evaluation by the drift
    /// engine): the whole of it counts as one worker, and a client that gives up does not free
    /// the worker before the work is done. Admitted like `run`, for `who`.
    pub async fn run_async<T, F>(&self, who: &str, what: &str, job: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        let admitted = self.admit(who)?;
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|e| ApiError::Internal(format!("planner pool closed: {e}")))?;
        tokio::spawn(async move {
            let _held = (permit, admitted);
            job.await
        })
        .await
        .map_err(|e| ApiError::Internal(format!("{what} task failed: {e}")))?
    }

    /// A place for one job of `who`: within the principal's share and the pool's queue.
    fn admit(&self, who: &str) -> Result<Admitted, ApiError> {
        {
            let mut m = self
                .by_principal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = m.entry(who.to_string()).or_insert(0);
            if *n >= PER_PRINCIPAL {
                return Err(ApiError::ResourceExhausted(format!(
                    "planner: {who} already has {n} plans or applies running or queued, the \
                     limit per principal ({PER_PRINCIPAL}: one running, one waiting); retry \
                     when one has finished"
                )));
            }
            *n += 1;
        }
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted {
            total: Arc::clone(&self.admitted),
            by_principal: Arc::clone(&self.by_principal),
            who: who.to_string(),
        };
        if before >= PLAN_WORKERS + PLAN_QUEUE {
            return Err(busy(before));
        }
        Ok(admitted)
    }
}

fn busy(before: usize) -> ApiError {
    ApiError::ResourceExhausted(format!(
        "planner busy: {before} plans or applies are running or queued (at most {PLAN_WORKERS} \
         run and {PLAN_QUEUE} wait); retry shortly"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn beyond_the_queue_a_job_is_refused_and_the_rest_run_one_at_a_time() {
        let pool = PlanPool::default();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..PLAN_WORKERS + PLAN_QUEUE)
            .map(|i| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(&format!("p{i}"), "test", move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    })
                    .await
                })
            })
            .collect();
        // Let every job be admitted before the one too many.
        for _ in 0..10_000 {
            if pool.admitted.load(Ordering::SeqCst) >= PLAN_WORKERS + PLAN_QUEUE {
                break;
            }
            tokio::task::yield_now().await;
        }
        let refused = pool.run("late", "test", || Ok(())).await;
        assert!(
            matches!(&refused, Err(ApiError::ResourceExhausted(m)) if m.contains("planner busy")),
            "{refused:?}"
        );
        for j in jobs {
            j.await.unwrap().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), PLAN_WORKERS);
        assert_eq!(pool.admitted.load(Ordering::SeqCst), 0);
        pool.run("late", "test", || Ok(())).await.unwrap();
    }

    #[tokio::test]
    async fn one_principal_gets_one_running_and_one_waiting_job() {
        let pool = PlanPool::default();
        let gate = Arc::new(std::sync::Barrier::new(2));
        let (p, g) = (pool.clone(), Arc::clone(&gate));
        let first = tokio::spawn(async move {
            p.run("vera", "plan", move || {
                g.wait();
                Ok(())
            })
            .await
        });
        let p = pool.clone();
        let second = tokio::spawn(async move { p.run("vera", "plan", || Ok(())).await });
        for _ in 0..10_000 {
            if pool.admitted.load(Ordering::SeqCst) >= 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let third = pool.run("vera", "plan", || Ok(())).await;
        assert!(
            matches!(&third, Err(ApiError::ResourceExhausted(m))
                if m.contains("vera already has 2") && m.contains("limit per principal")),
            "{third:?}"
        );
        // Someone else still gets a place (it waits behind vera's two).
        let p = pool.clone();
        let other = tokio::spawn(async move { p.run("admin", "apply", || Ok(7)).await });
        for _ in 0..10_000 {
            if pool.admitted.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.admitted.load(Ordering::SeqCst),
            3,
            "admin was admitted"
        );
        gate.wait();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(other.await.unwrap().unwrap(), 7);
        assert!(pool.by_principal.lock().unwrap().is_empty());
    }
}
