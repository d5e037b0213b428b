//! The worker handler of both LMTP images: loads the settings once when the image starts,
//! builds the image's store, and runs a [`session`](super::session) for every connection the
//! dispatcher hands over. One log line per connection end says how the session ended.

use std::sync::Arc;

use crate::worker::runtime::{Connection, Handler, WorkerConfig};

use super::delivery_log::DeliveryLog;
use super::maildir::{MaildirSettings, MaildirStore};
use super::mbox::{MboxSettings, MboxStore};
use super::session::{self, Context, End};
use super::settings::{self, ImageKind, Settings, SettingsError};
use super::store::Store;

/// An LMTP image's connection handler.
pub struct LmtpServer {
    settings: Settings,
    store: Box<dyn Store>,
    delivery_log: Option<DeliveryLog>,
}

impl LmtpServer {
    /// Reads the configuration for the worker's service; an error means the image must not
    /// start.
    pub fn load(kind: ImageKind, worker: &WorkerConfig) -> Result<LmtpServer, SettingsError> {
        let settings = settings::load(kind, &worker.parameter, worker.debug != 0)?;
        for note in &settings.notes {
            log::warn!("{note}");
        }
        Ok(LmtpServer::new(settings))
    }

    /// A server with the store its settings call for.
    pub fn new(settings: Settings) -> LmtpServer {
        let store: Box<dyn Store> = match settings.kind {
            ImageKind::Store => Box::new(MaildirStore::new(MaildirSettings {
                root: settings.store_root.clone(),
                create: settings.create_mailboxes,
                default_quota: settings.default_quota,
                over_quota_permanent: settings.over_quota_permanent,
            })),
            ImageKind::Native => Box::new(MboxStore::new(MboxSettings {
                spool: settings.spool.clone(),
                lock_attempts: settings.lock_attempts,
                lock_sleep: settings.lock_sleep,
                default_quota: settings.default_quota,
                over_quota_permanent: settings.over_quota_permanent,
            })),
        };
        match settings.kind {
            ImageKind::Store => log::info!(
                "channel {}: delivering into the Maildir store {}{}",
                settings.channel,
                settings.store_root.display(),
                if settings.create_mailboxes {
                    " (mailboxes created on first delivery)"
                } else {
                    ""
                }
            ),
            ImageKind::Native => log::info!(
                "channel {}: delivering into mbox files in {}",
                settings.channel,
                settings.spool.display()
            ),
        }
        let delivery_log = settings
            .delivery_log
            .clone()
            .map(|p| DeliveryLog::new(p, settings.kind.program()));
        if let Some(Err(e)) = delivery_log.as_ref().map(DeliveryLog::open_now) {
            // The first line tries again (and waits for the file through a rotation).
            log::warn!("{e}");
        }
        LmtpServer {
            settings,
            store,
            delivery_log,
        }
    }

    pub fn into_handler(self) -> Arc<dyn Handler> {
        Arc::new(self)
    }
}

/// The `main` of an LMTP image: the worker runtime with this server as its handler.
pub fn main_for(kind: ImageKind) -> std::process::ExitCode {
    crate::worker::image::main_for(kind.program(), |worker| {
        LmtpServer::load(kind, worker)
            .map(LmtpServer::into_handler)
            .map_err(|e| e.to_string())
    })
}

impl Handler for LmtpServer {
    fn serve(&self, c: Connection) {
        let ctx = Context {
            settings: &self.settings,
            store: self.store.as_ref(),
            conn: c.id,
            client: c.client,
            drain: &c.drain,
            delivery_log: self.delivery_log.as_ref(),
            counters: &c.counters,
        };
        let end = session::run(&c.stream, &ctx);
        match end {
            End::Quit | End::Closed => {
                log::debug!("connection {} from {}: {end:?}", c.id, c.client)
            }
            // These log their own line.
            End::Timeout | End::Oversize | End::Junk | End::Draining => {}
            End::Error(e) => log::warn!("connection {} from {}: {e}", c.id, c.client),
        }
    }
}
