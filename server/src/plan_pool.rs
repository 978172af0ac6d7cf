//! A small bounded pool for the CPU-heavy part of Plan and Apply (validating a change set of
//! up to 20,000 resources, planning its effect on every device). The work runs on tokio's
//! blocking threads, never on the async workers that serve Get, List and agent reports, and
//! only `PLAN_WORKERS` jobs run at once; up to `PLAN_QUEUE` more wait, beyond that a request
//! is refused at once as "planner busy" (RESOURCE_EXHAUSTED) rather than piling up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

use crate::model::ApiError;

/// Jobs running at once: one core stays free for the async workers on a small machine.
pub const PLAN_WORKERS: usize = 1;
/// Jobs that may wait for a worker; one more is refused.
pub const PLAN_QUEUE: usize = 8;

/// Runs planner jobs on the blocking threads, at most `PLAN_WORKERS` at a time.
#[derive(Debug, Clone)]
pub struct PlanPool {
    permits: Arc<Semaphore>,
    /// Jobs admitted and not finished (waiting or running).
    admitted: Arc<AtomicUsize>,
}

impl Default for PlanPool {
    fn default() -> Self {
        Self {
            permits: Arc::new(Semaphore::new(PLAN_WORKERS)),
            admitted: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Counts a job as admitted until it is dropped (finished, or its request went away).
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PlanPool {
    /// Runs `job` on a blocking thread once a worker is free. The permit moves into the job,
    /// so a client that gives up does not free a worker that is still busy with its work.
    pub async fn run<T, F>(&self, what: &str, job: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    {
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(Arc::clone(&self.admitted));
        if before >= PLAN_WORKERS + PLAN_QUEUE {
            return Err(busy(before));
        }
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
    /// the worker before the work is done.
    pub async fn run_async<T, F>(&self, what: &str, job: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(Arc::clone(&self.admitted));
        if before >= PLAN_WORKERS + PLAN_QUEUE {
            return Err(busy(before));
        }
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
            .map(|_| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run("test", move || {
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
        let refused = pool.run("test", || Ok(())).await;
        assert!(
            matches!(&refused, Err(ApiError::ResourceExhausted(m)) if m.contains("planner busy")),
            "{refused:?}"
        );
        for j in jobs {
            j.await.unwrap().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), PLAN_WORKERS);
        assert_eq!(pool.admitted.load(Ordering::SeqCst), 0);
        pool.run("test", || Ok(())).await.unwrap();
    }
}
