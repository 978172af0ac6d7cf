//! The read loop over scripted channels: the orders of messages real servers send.

use std::collections::VecDeque;
use std::time::Duration;

use russh::{ChannelMsg, Sig};
use tokio::time::Instant;

use super::*;

enum Step {
    Msg(ChannelMsg),
    Wait(Duration),
    /// The channel ends (`wait()` returns `None`).
    End,
}

/// A channel replaying a script; when the script runs out it hangs (a silent command).
struct Scripted {
    script: VecDeque<Step>,
    /// Replaces the script when TERM arrives (what the command does on TERM).
    on_term: Option<VecDeque<Step>>,
    terms: usize,
    closes: usize,
    ended: bool,
}

impl Scripted {
    fn new(script: Vec<Step>) -> Self {
        Self {
            script: script.into(),
            on_term: None,
            terms: 0,
            closes: 0,
            ended: false,
        }
    }
}

impl ExecChannel for Scripted {
    async fn next_msg(&mut self) -> Option<ChannelMsg> {
        loop {
            if self.ended {
                return None;
            }
            match self.script.pop_front() {
                Some(Step::Msg(m)) => return Some(m),
                Some(Step::Wait(d)) => tokio::time::sleep(d).await,
                Some(Step::End) => {
                    self.ended = true;
                    return None;
                }
                None => std::future::pending::<()>().await,
            }
        }
    }
    async fn terminate(&mut self) {
        self.terms += 1;
        if let Some(s) = self.on_term.take() {
            self.script = s;
        }
    }
    async fn close(&mut self) {
        self.closes += 1;
    }
}

fn data(s: &str) -> Step {
    Step::Msg(ChannelMsg::Data {
        data: s.as_bytes().to_vec().into(),
    })
}
fn stderr(s: &str) -> Step {
    Step::Msg(ChannelMsg::ExtendedData {
        data: s.as_bytes().to_vec().into(),
        ext: 1,
    })
}
fn status(c: u32) -> Step {
    Step::Msg(ChannelMsg::ExitStatus { exit_status: c })
}

fn limits(deadline: Option<Duration>) -> LoopLimits {
    LoopLimits {
        capture_bytes: 1024,
        deadline: deadline.map(|d| Instant::now() + d),
        grace: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn eof_before_exit_status_keeps_the_status() {
    let mut ch = Scripted::new(vec![
        Step::Msg(ChannelMsg::Success),
        data("out"),
        stderr("err"),
        Step::Msg(ChannelMsg::Eof),
        Step::Wait(Duration::from_millis(5)),
        status(3),
        Step::Msg(ChannelMsg::Close),
        Step::End,
    ]);
    let end = drive(&mut ch, limits(None)).await;
    assert_eq!(end.outcome, ExitOutcome::Exited(3));
    assert_eq!(end.stdout.head, b"out");
    assert_eq!(end.stderr.head, b"err");
    assert!(!end.refused);
}

#[tokio::test]
async fn data_after_exit_status_is_still_read() {
    let mut ch = Scripted::new(vec![
        status(0),
        data("late"),
        Step::Msg(ChannelMsg::Eof),
        Step::End,
    ]);
    let end = drive(&mut ch, limits(None)).await;
    assert_eq!(end.outcome, ExitOutcome::Exited(0));
    assert_eq!(end.stdout.head, b"late");
}

#[tokio::test]
async fn close_without_status_is_no_status_never_success() {
    let mut ch = Scripted::new(vec![
        data("partial"),
        Step::Msg(ChannelMsg::Eof),
        Step::Msg(ChannelMsg::Close),
        Step::End,
    ]);
    let end = drive(&mut ch, limits(None)).await;
    assert_eq!(end.outcome, ExitOutcome::NoStatus);
    assert!(!end.outcome.is_success());
}

#[tokio::test]
async fn exit_signal_is_reported_with_its_details() {
    let mut ch = Scripted::new(vec![
        Step::Msg(ChannelMsg::ExitSignal {
            signal_name: Sig::SEGV,
            core_dumped: true,
            error_message: "boom".into(),
            lang_tag: String::new(),
        }),
        Step::Msg(ChannelMsg::Eof),
        Step::End,
    ]);
    let end = drive(&mut ch, limits(None)).await;
    assert_eq!(
        end.outcome,
        ExitOutcome::Signaled {
            signal: "SEGV".into(),
            core_dumped: true,
            message: "boom".into()
        }
    );
}

#[tokio::test]
async fn a_refused_exec_is_flagged() {
    let mut ch = Scripted::new(vec![Step::Msg(ChannelMsg::Failure), Step::End]);
    let end = drive(&mut ch, limits(None)).await;
    assert!(end.refused);
    assert_eq!(end.outcome, ExitOutcome::NoStatus);
}

#[tokio::test(start_paused = true)]
async fn deadline_sends_term_then_closes_after_the_grace() {
    // A silent command that ignores TERM: the loop must close and give up on its own.
    let mut ch = Scripted::new(vec![data("started")]);
    let t0 = Instant::now();
    let end = drive(&mut ch, limits(Some(Duration::from_secs(10)))).await;
    assert_eq!(end.outcome, ExitOutcome::TimedOut);
    assert_eq!((ch.terms, ch.closes), (1, 1));
    // deadline + grace (TERM -> close) + grace (close -> give up)
    assert_eq!(t0.elapsed(), Duration::from_secs(14));
    assert_eq!(end.stdout.head, b"started");
}

#[tokio::test(start_paused = true)]
async fn a_command_that_dies_on_term_is_still_timed_out() {
    let mut ch = Scripted::new(vec![]);
    ch.on_term = Some(
        vec![
            Step::Msg(ChannelMsg::ExitSignal {
                signal_name: Sig::TERM,
                core_dumped: false,
                error_message: String::new(),
                lang_tag: String::new(),
            }),
            Step::End,
        ]
        .into(),
    );
    let t0 = Instant::now();
    let end = drive(&mut ch, limits(Some(Duration::from_secs(5)))).await;
    assert_eq!(end.outcome, ExitOutcome::TimedOut);
    assert_eq!((ch.terms, ch.closes), (1, 0));
    assert_eq!(t0.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_status_before_the_deadline_wins_even_if_the_channel_lingers() {
    let mut ch = Scripted::new(vec![status(0)]);
    let end = drive(&mut ch, limits(Some(Duration::from_secs(5)))).await;
    assert_eq!(end.outcome, ExitOutcome::Exited(0));
    assert_eq!((ch.terms, ch.closes), (0, 1));
}

/// A flood far beyond russh's 100-message channel buffer, read by a slow consumer: the
/// producer (the session loop, here a task) must never block for good, everything is counted,
/// and the status that follows the flood is kept.
#[tokio::test(start_paused = true)]
async fn flood_through_a_bounded_buffer_with_a_slow_consumer() {
    struct Slow(tokio::sync::mpsc::Receiver<ChannelMsg>);
    impl ExecChannel for Slow {
        async fn next_msg(&mut self) -> Option<ChannelMsg> {
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.0.recv().await
        }
        async fn terminate(&mut self) {}
        async fn close(&mut self) {}
    }
    let (tx, rx) = tokio::sync::mpsc::channel(100);
    const N: usize = 1000;
    let producer = tokio::spawn(async move {
        for i in 0..N {
            let chunk = format!("{:08}\n", i);
            let m = if i % 2 == 0 {
                ChannelMsg::Data { data: chunk.into() }
            } else {
                ChannelMsg::ExtendedData {
                    data: chunk.into(),
                    ext: 1,
                }
            };
            tx.send(m).await.unwrap();
        }
        tx.send(ChannelMsg::Eof).await.unwrap();
        tx.send(ChannelMsg::ExitStatus { exit_status: 0 })
            .await
            .unwrap();
        tx.send(ChannelMsg::Close).await.unwrap();
    });
    let mut ch = Slow(rx);
    let end = drive(
        &mut ch,
        LoopLimits {
            capture_bytes: 90,
            deadline: Some(Instant::now() + Duration::from_secs(60)),
            grace: Duration::from_secs(1),
        },
    )
    .await;
    producer.await.unwrap();
    assert_eq!(end.outcome, ExitOutcome::Exited(0));
    let half = (N / 2 * 9) as u64;
    assert_eq!(end.stdout.total_bytes, half);
    assert_eq!(end.stdout.truncated_bytes, half - 90);
    assert_eq!(
        end.stdout.head,
        b"00000000\n00000002\n00000004\n00000006\n00000008\n"
    );
    assert!(end.stdout.tail.ends_with(b"00000998\n"));
    assert!(end.stderr.tail.ends_with(b"00000999\n"));
}
