//! Reading an installation's configuration files.
//!
//! Each file has a grammar in `parsers/` and a module here that turns the parse into typed
//! values; nothing in this module opens sockets or starts processes.
//!
//! * [`tailor`]: `imta_tailor`, logical names such as `IMTA_BIN:`, and where the other files are.
//! * [`dispatcher_cnf`]: `dispatcher.cnf` as written (sections, options, includes);
//!   [`options`] is the table of every option the original documents;
//!   [`service`] applies defaults and checks values, giving one [`service::Service`] per section.
//! * [`mappings`]: the `mappings` file (tables of pattern/template entries).
//! * [`imta_cnf`]: `imta.cnf` channel blocks, with [`keywords`] saying how many arguments each
//!   channel keyword takes, and [`channel_option`] for `IMTA_TABLE:<channel>_option`.
//! * [`installation`]: all of the above loaded together, as the dispatcher and `--check` do.
//! * [`error`], [`source`], [`lines`], [`integer`], [`option_file`]: what the readers share.

pub mod channel_option;
pub mod dispatcher_cnf;
pub mod error;
pub mod imta_cnf;
pub mod installation;
pub mod integer;
pub mod keywords;
pub mod lines;
pub mod mappings;
pub mod option_file;
pub mod options;
pub mod service;
pub mod source;
pub mod tailor;
