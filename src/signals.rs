//! The signals the gateway handles, registered at start: nginx's conventions (TERM/INT/QUIT
//! drain, HUP reload, USR1 reopen logs), and every other catchable one logged, never fatal.

/// A signal the gateway acts on.
pub(crate) enum Signal {
    /// SIGTERM, SIGINT, SIGQUIT: drain and exit.
    Terminate(&'static str),
    /// SIGHUP: reload the configuration.
    Reload,
    /// SIGUSR1: reopen the access-log file (logrotate's `postrotate`).
    ReopenLogs,
    /// SIGUSR2, SIGALRM, SIGIO, SIGXCPU, SIGXFSZ, SIGVTALRM, SIGPROF, SIGPWR: logged, never
    /// fatal (their default action would end the process without a word).
    Ignored(&'static str),
}

/// The handlers, registered at once so a signal arriving while the gateway starts is queued.
pub(crate) struct Signals {
    handlers: Vec<(tokio::signal::unix::Signal, fn() -> Signal)>,
}

impl Signals {
    pub(crate) fn register() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let table: [(SignalKind, fn() -> Signal); 13] = [
            (SignalKind::terminate(), || Signal::Terminate("SIGTERM")),
            (SignalKind::interrupt(), || Signal::Terminate("SIGINT")),
            (SignalKind::quit(), || Signal::Terminate("SIGQUIT")),
            (SignalKind::hangup(), || Signal::Reload),
            (SignalKind::user_defined1(), || Signal::ReopenLogs),
            (SignalKind::user_defined2(), || Signal::Ignored("SIGUSR2")),
            (SignalKind::alarm(), || Signal::Ignored("SIGALRM")),
            (SignalKind::io(), || Signal::Ignored("SIGIO")),
            // Linux numbers of signals whose default action also ends the process.
            (SignalKind::from_raw(24), || Signal::Ignored("SIGXCPU")),
            (SignalKind::from_raw(25), || Signal::Ignored("SIGXFSZ")),
            (SignalKind::from_raw(26), || Signal::Ignored("SIGVTALRM")),
            (SignalKind::from_raw(27), || Signal::Ignored("SIGPROF")),
            (SignalKind::from_raw(30), || Signal::Ignored("SIGPWR")),
        ];
        let handlers = table
            .into_iter()
            .map(|(kind, meaning)| Ok((signal(kind)?, meaning)))
            .collect::<std::io::Result<_>>()?;
        Ok(Signals { handlers })
    }

    /// The next signal received.
    pub(crate) async fn next(&mut self) -> Signal {
        let ready = std::future::poll_fn(|cx| {
            for (handler, meaning) in &mut self.handlers {
                if handler.poll_recv(cx).is_ready() {
                    return std::task::Poll::Ready(meaning());
                }
            }
            std::task::Poll::Pending
        });
        ready.await
    }
}
