//! The new dispatcher's side of a takeover (`dispatcher --takeover`, `docs/control.md`): it
//! holds the old one's listening sockets without accepting until every service has its
//! `MIN_PROCS` workers ready, then commits, takes the pid file and the control socket, starts
//! accepting and says `DONE`; or gives up at its deadline, which leaves the old one serving.
//! The client end of the conversation is [`crate::control::client::Takeover`].

use std::time::{Duration, Instant};

use super::event_loop::Loop;

impl Loop {
    /// A takeover by this dispatcher: commit once every service has its MIN_PROCS workers,
    /// give up at the deadline.
    pub(super) fn takeover_progress(&mut self) {
        if self.setup.takeover.is_none() || self.rt.stopping.is_some() {
            return;
        }
        if self.rt.services.min_procs_ready() {
            let Some((t, _)) = self.setup.takeover.take() else {
                return;
            };
            let mut t = t;
            match t.commit(Duration::from_secs(10)) {
                Ok(old) => {
                    // Past the commit the old one no longer accepts: this one serves, whatever
                    // else fails.
                    self.take_place();
                    self.rt.accept_held = false;
                    self.rt.accept_again = true;
                    if let Err(e) = t.done(Duration::from_secs(10)) {
                        log::warn!("takeover: the old dispatcher did not confirm DONE: {e}");
                    }
                    let text = format!(
                        "took over from pid {old}; this dispatcher is pid {}",
                        std::process::id()
                    );
                    log::info!("{text}");
                    (self.setup.started)(Ok(text));
                }
                Err(e) => {
                    self.give_up_takeover(format!("the running dispatcher refused the commit: {e}"))
                }
            }
        } else if self.takeover_deadline.is_some_and(|d| Instant::now() >= d) {
            self.setup.takeover = None;
            self.give_up_takeover("its workers were not ready in time".into());
        }
    }

    /// After the commit: the pid file and the control socket become this dispatcher's. What
    /// fails is logged; serving goes on (the old dispatcher no longer accepts).
    pub(super) fn take_place(&mut self) {
        self.take_pid_file_and_socket("takeover");
    }

    pub(super) fn give_up_takeover(&mut self, why: String) {
        let text = format!("takeover failed: {why}; the running dispatcher goes on serving");
        log::error!("{text}");
        (self.setup.started)(Err(text.clone()));
        self.failed = Some(text);
        if self.rt.stopping.is_none() {
            self.stop();
        }
    }
}
