//! Single flight by key: concurrent callers of [`SingleFlight::run`] with one key share
//! one execution, run in its own task (a caller going away does not cancel it).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

pub struct SingleFlight<T> {
    map: Arc<Mutex<HashMap<String, watch::Receiver<Option<T>>>>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        SingleFlight { map: Arc::new(Mutex::new(HashMap::new())) }
    }
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// Runs `make()` unless a run for `key` is under way, and returns its result with
    /// `true` when this caller started it. `None` only if the run's task died (panic or
    /// runtime shutdown).
    pub async fn run<F, Fut>(&self, key: &str, make: F) -> Option<(T, bool)>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (mut rx, led) = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(key) {
                Some(rx) => (rx.clone(), false),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.to_owned(), rx.clone());
                    let fut = make();
                    let (map, key) = (self.map.clone(), key.to_owned());
                    tokio::spawn(async move {
                        let v = fut.await;
                        map.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                        let _ = tx.send(Some(v));
                    });
                    (rx, true)
                }
            }
        };
        let v = rx.wait_for(Option::is_some).await.ok()?.clone()?;
        Some((v, led))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_run_per_key_at_a_time() {
        let sf = SingleFlight::<usize>::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let calls = (0..20).map(|_| {
            let (runs, gate) = (runs.clone(), gate.clone());
            sf.run("k", move || async move {
                let _p = gate.acquire().await.unwrap();
                runs.fetch_add(1, Ordering::SeqCst) + 1
            })
        });
        // join polls every call once (each joins or starts the run) before the gate opens.
        let (results, ()) = futures_util::future::join(futures_util::future::join_all(calls), async {
            tokio::task::yield_now().await;
            gate.add_permits(100);
        })
        .await;
        let leaders = results.iter().filter(|r| r.unwrap().1).count();
        assert_eq!(leaders, 1);
        assert!(results.iter().all(|r| r.unwrap().0 == 1));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // A later call runs again.
        let (v, led) = sf.run("k", || async { 99 }).await.unwrap();
        assert_eq!((v, led), (99, true));
    }
}
