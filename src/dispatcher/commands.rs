//! What each request on the control socket or the metrics endpoint does: `STATUS`, `RELOAD`,
//! `RESTART`, `STOP`, the running side of `TAKEOVER`/`COMMIT`/`DONE` (carried out by
//! [`super::handover`]), and the metrics scrape. The reading and writing is
//! [`super::control`]'s; the protocol is [`crate::control::protocol`]'s.

use super::control::{ConvId, Speaks};
use super::event_loop::Loop;
use super::handover::Giving;
use crate::control::protocol::{Reply, Request};

impl Loop {
    pub(super) fn on_request(&mut self, id: ConvId, text: &[u8]) {
        let Some((speaks, peer)) = self.convs.who(id) else {
            return;
        };
        if speaks == Speaks::Http {
            let request = super::http::parse(text);
            let rt = &self.rt;
            let bytes = super::http::reply(&request, || {
                super::metrics::render(&super::status::metrics(rt))
            });
            return self.convs.reply(self.rt.poll.registry(), id, bytes, false);
        }
        let line = String::from_utf8_lossy(text);
        let line = line.trim_end_matches('\n');
        let request = match Request::parse(line) {
            Ok(r) => r,
            Err(e) => return self.answer(id, Reply::err(e.0)),
        };
        let pid = peer.map_or(0, |(pid, _)| pid);
        if !matches!(request, Request::Status { .. }) {
            log::info!("control: {request} from pid {pid}");
        }
        match request {
            Request::Status { json } => {
                let snapshot = super::status::snapshot(&self.rt);
                let body = if json {
                    super::status::json(&snapshot)
                } else {
                    super::status::text(&snapshot)
                };
                self.answer(id, Reply::ok("status").with_body(body));
            }
            Request::Reload if self.rt.stopping.is_some() => {
                self.answer(id, Reply::err("the dispatcher is stopping"))
            }
            Request::Reload => {
                let reply = match self.reload() {
                    Ok(g) => Reply::ok(format!("applied: configuration reloaded (generation {g})")),
                    Err(e) => Reply::err(format!(
                        "reload refused, still running on the previous configuration: {e}"
                    )),
                };
                self.answer(id, reply);
            }
            Request::Restart { service } => {
                let reply = match super::restart::restart(&mut self.rt, service.as_deref()) {
                    Ok((names, g)) => Reply::ok(format!(
                        "restarted {} (generation {g}): new workers take new connections, the previous ones drain",
                        names.join(", ")
                    )),
                    Err(e) => Reply::err(e),
                };
                self.answer(id, reply);
            }
            Request::Stop => {
                self.convs.hold(id);
                self.stop_waiters.push(id);
                if self.rt.stopping.is_none() {
                    self.stop();
                }
            }
            Request::Takeover => {
                if let Some(why) = super::handover::refusal(&self.rt, self.giving) {
                    log::warn!("control: takeover by pid {pid} refused: {why}");
                    return self.answer(id, Reply::err(why));
                }
                match super::handover::offer(&self.rt, self.setup.metrics.as_ref()) {
                    Ok((text, fds)) => {
                        log::info!(
                            "takeover by pid {pid}: listening sockets handed over; still serving until it commits"
                        );
                        self.giving = Some(Giving {
                            conv: id,
                            pid,
                            committed: None,
                        });
                        self.convs.reply_with_fds(
                            self.rt.poll.registry(),
                            id,
                            text.into_bytes(),
                            fds,
                            true,
                        );
                    }
                    Err(e) => self.answer(id, Reply::err(e)),
                }
            }
            Request::Commit { pid: new } => match self.giving {
                Some(g) if g.conv == id && g.committed.is_none() => self.commit(id, new),
                _ => self.answer(id, Reply::err("COMMIT outside a takeover")),
            },
            Request::Done => match self.giving {
                Some(g) if g.conv == id && g.committed.is_some() => self.hand_over(id),
                _ => self.answer(id, Reply::err("DONE outside a committed takeover")),
            },
        }
    }

    pub(super) fn answer(&mut self, id: ConvId, reply: Reply) {
        self.convs
            .reply(self.rt.poll.registry(), id, reply.encode(), false);
    }
}
