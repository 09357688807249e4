//! Properties of the call state machine (`wspd::call`): any sequence of
//! inputs keeps it consistent with a model of what each party may see.
//! Then the case this property found, kept as a plain test.

use proptest::prelude::*;

use super::config;

/// A model of what each party of a call may see, checked against
/// `wspd::call::Call` step by step.
///
/// Words: the parties are the caller and the devices; a stranger is any
/// other peer. A party's *status* is
/// - **In**: in the call (it sent the invite, or received one, and has not
///   left);
/// - **Transferred**: it sent bye 101, which was accepted and detached it;
/// - **Out**: it left for good, by its own bye (not 101) or by a *closing
///   bye*.
///
/// A *closing bye* to a party is a server bye with a code other than 400 and
/// 481, or a relayed bye whose code is not 101, or, to a party that has
/// transferred, the other side's relayed 101 (which completes the call).
/// A *refusal* is a server bye 400 or 481.
///
/// Invariants checked after every input (docs/protocol.md §3-§5,
/// docs/ARCHITECTURE.md "Every party gets one ending"):
///
/// 1. `Call::start` relays the invite to every device and does nothing else.
/// 2. A refusal is only ever sent to the sender of the frame, is the only
///    output of that input, and changes nothing (the machine's state is
///    exactly as before, so it never ends the call for anyone).
/// 3. A frame from anyone who is not In (a stranger, a party that is Out,
///    that transferred, or whose socket is gone), or any frame once the
///    call has an outcome, gets exactly one bye 481 and nothing else.
/// 4. A frame from an In party is refused with 400 exactly when the table
///    "what each frame may do" (protocol §4) does not allow it; otherwise
///    it is relayed exactly where that table says (first ringing only; the
///    answering offer; 603 and a single device's bye to the caller; after
///    the answer, to the other side while its socket is there), verbatim
///    (the very same content text, not a copy) and never back to its
///    sender.
/// 5. Each party receives at most one closing bye, and a closing bye other
///    than the final 101 is immediately followed by that party's `Detach`.
/// 6. A `Detach` is either that one, or the sender's own after its accepted
///    bye (every accepted bye detaches its sender, once). No party is
///    detached twice, except that a side that transferred may, with its
///    closing bye, be detached again (idempotent for the session).
/// 7. Nothing is relayed to a party that is Out, and nothing at all is
///    addressed to a party whose socket is gone (Gone), except refusals of
///    frames it sends. A transferred side still receives the other side's
///    frames while its socket is there (protocol §4, Transfer).
/// 8. Server byes carry only the codes of protocol §5 that the machine
///    generates: 200, 408, 410, 480, 486, 487, 503, 603 (and 400/481 as
///    refusals).
/// 9. While ringing, the caller is In and some device is In and not gone;
///    after the answer, every other device is Out or gone, and each side is
///    In or Transferred (a gone side has transferred). `ring_deadline()` is
///    set exactly while ringing, `is_answered()` exactly while answered.
/// 10. When the outcome is set, no party that is still In is there: every
///     party is Out, Transferred or gone. The outcome fits how it ended
///     (both 101s: transferred; the timer: timeout; the caller's bye while
///     ringing: cancelled; a 603: declined; a hang-up after the answer:
///     hung up; the last device leaving: busy/gone/unanswered by the
///     devices' codes; a single device's bye: `Outcome::from_code`;
///     shutdown: unavailable), and it never changes.
/// 11. No leak: whatever happened, `Gone` of every party plus `RingTimeout`
///     (in any order) ends the call.
/// 12. Exactly one ending per party: when the call ends, every party whose
///     socket is still there has had exactly one bye that ended the call
///     for it: its own (hang-up, decline, busy...) or one closing bye
///     received. For a side that transferred it is its own 101 when that
///     completed the transfer, else exactly one closing bye (the other
///     side's 101, its hang-up, or 410); shutdown says nothing to sides
///     that transferred.
mod machine {
    use proptest::prelude::*;
    use tokio::time::{Duration, Instant};
    use wspd::call::{Call, Input, Output, Outputs, PeerId};
    use wspd::frame::Keyword;
    use wspd::frame::{ByeCode, Outcome};

    pub const CALLER: PeerId = 1;

    fn device(i: usize) -> PeerId {
        10 + i as PeerId
    }

    #[derive(Clone, Copy, Debug)]
    pub enum Who {
        Caller,
        /// A device, its index taken modulo the number of devices.
        Device(usize),
        Stranger(u8),
    }

    #[derive(Clone, Copy, Debug)]
    pub enum Step {
        /// A frame; `code` is used when the keyword is bye; `alt` picks
        /// the other content of a keyword (icecandidate null).
        Frame {
            who: Who,
            keyword: Keyword,
            code: u16,
            alt: bool,
        },
        Gone(Who),
        RingTimeout,
        Shutdown,
    }

    #[derive(Clone, Debug)]
    pub struct Scenario {
        pub devices: usize,
        pub steps: Vec<Step>,
        /// The completion: `Gone` of every party (0 the caller, 1.. the
        /// devices) in this order, `RingTimeout` before the one at
        /// `ring_at`.
        pub completion: Vec<usize>,
        pub ring_at: usize,
    }

    fn who() -> impl Strategy<Value = Who> {
        prop_oneof![
            3 => Just(Who::Caller),
            5 => (0usize..4).prop_map(Who::Device),
            1 => (0u8..2).prop_map(Who::Stranger),
        ]
    }

    /// The codes of the table in protocol §5 that clients send, and any.
    fn code() -> impl Strategy<Value = u16> {
        prop_oneof![
            2 => Just(101u16),
            3 => proptest::sample::select(vec![200u16, 486, 487, 603, 404, 480]),
            1 => 100u16..=699,
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        let keyword = prop_oneof![
            1 => Just(Keyword::Bye),
            2 => proptest::sample::select(Keyword::ALL.to_vec()),
        ];
        prop_oneof![
            40 => (who(), keyword, code(), any::<bool>()).prop_map(|(who, keyword, code, alt)| {
                Step::Frame { who, keyword, code, alt }
            }),
            4 => who().prop_map(Step::Gone),
            1 => Just(Step::RingTimeout),
            1 => Just(Step::Shutdown),
        ]
    }

    /// Half the scenarios start with a device answering and the caller
    /// answering back, so that random steps reach the answered call and
    /// its transfer as often as the ringing one.
    pub fn scenario() -> impl Strategy<Value = Scenario> {
        let steps = (
            proptest::collection::vec(step(), 0..40),
            proptest::option::of(0usize..4),
        )
            .prop_map(|(mut steps, answered_by)| {
                if let Some(d) = answered_by {
                    let frame = |who, keyword| Step::Frame {
                        who,
                        keyword,
                        code: 0,
                        alt: false,
                    };
                    let prefix = [
                        frame(Who::Device(d), Keyword::Ringing),
                        frame(Who::Device(d), Keyword::Offer),
                        frame(Who::Caller, Keyword::Answer),
                    ];
                    steps.splice(0..0, prefix);
                }
                steps
            });
        (1usize..=4, steps).prop_flat_map(|(devices, steps)| {
            (
                Just(devices),
                Just(steps),
                Just((0..=devices).collect::<Vec<_>>()).prop_shuffle(),
                0..=devices + 1,
            )
                .prop_map(|(devices, steps, completion, ring_at)| Scenario {
                    devices,
                    steps,
                    completion,
                    ring_at,
                })
        })
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Status {
        In,
        Transferred,
        Out,
    }

    #[derive(Clone, Debug)]
    struct Party {
        id: PeerId,
        status: Status,
        gone: bool,
        /// Closing byes received.
        closings: u32,
        /// Sent an accepted bye other than 101.
        hung_up: bool,
        /// Its own 101 completed the transfer (the other side's came first).
        completed: bool,
        detaches: u32,
        /// For a device that left while ringing: its bye code, 410 if gone.
        left: Option<u16>,
        /// Still there (not gone) when the call ended.
        there_at_end: bool,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Phase {
        Ringing,
        Answered {
            callee: usize,
            caller_answered: bool,
        },
        Ended,
    }

    pub struct Model {
        parties: Vec<Party>,
        phase: Phase,
        ringing_relayed: bool,
        ended_by_shutdown: bool,
        /// Keeps the content texts alive for the inputs that borrow them.
        log: Vec<String>,
    }

    const ENDING_CODES: [u16; 8] = [200, 408, 410, 480, 486, 487, 503, 603];

    /// A frame's sender: its id, its party index (`None` for a stranger), and
    /// the frame's keyword, content and bye code.
    type Sender<'a> = (PeerId, Option<usize>, Keyword, Option<&'a str>, Option<u16>);

    fn same(a: Option<&str>, b: Option<&str>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            _ => false,
        }
    }

    /// 3: once the call has an outcome, it keeps it, and the only output
    /// is a 481 to a frame's sender.
    fn after_the_end(
        call: &Call,
        o: Outcome,
        input: Input<'_>,
        out: &Outputs,
        ctx: &dyn Fn() -> String,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(call.outcome(), Some(o), "the outcome changed: {}", ctx());
        match input {
            Input::Frame { from, .. } => prop_assert!(
                matches!(out[..], [Output::Bye { to, bye }] if to == from && bye.code == ByeCode::NO_SUCH_CALL),
                "after the end: {}",
                ctx()
            ),
            _ => prop_assert!(out.is_empty(), "after the end: {}", ctx()),
        }
        Ok(())
    }

    impl Model {
        fn index(&self, p: PeerId) -> Option<usize> {
            self.parties.iter().position(|x| x.id == p)
        }

        /// In the call and its socket there.
        fn live(&self, i: usize) -> bool {
            self.parties[i].status == Status::In && !self.parties[i].gone
        }

        /// Protocol §4, "what each frame may do", for a party that is In.
        fn allowed(&self, i: usize, keyword: Keyword, code: Option<u16>) -> bool {
            match self.phase {
                Phase::Ringing if i == 0 => keyword == Keyword::Bye && code != Some(101),
                Phase::Ringing => match keyword {
                    Keyword::Ringing | Keyword::Offer => true,
                    Keyword::Bye => code != Some(101),
                    _ => false,
                },
                Phase::Answered {
                    caller_answered, ..
                } => match keyword {
                    Keyword::Invite => false,
                    Keyword::Answer => i == 0 || caller_answered,
                    _ => true,
                },
                Phase::Ended => false,
            }
        }

        /// Where an allowed frame from In party `i` is relayed.
        fn relay_to(&self, i: usize, keyword: Keyword, code: Option<u16>) -> Option<usize> {
            match self.phase {
                // The caller's bye cancels: 487 to the devices, no relay.
                Phase::Ringing if i == 0 => None,
                Phase::Ringing => match keyword {
                    Keyword::Ringing if !self.ringing_relayed => Some(0),
                    Keyword::Offer => Some(0),
                    Keyword::Bye if code == Some(603) || self.parties.len() == 2 => Some(0),
                    _ => None,
                },
                Phase::Answered { callee, .. } => {
                    let other = if i == 0 { callee } else { 0 };
                    (keyword != Keyword::Ringing && !self.parties[other].gone).then_some(other)
                }
                Phase::Ended => None,
            }
        }

        fn input<'a>(&self, step: Step, content: Option<&'a str>, devices: usize) -> Input<'a> {
            let id = |w: Who| match w {
                Who::Caller => CALLER,
                Who::Device(d) => device(d % devices),
                Who::Stranger(k) => 100 + PeerId::from(k),
            };
            match step {
                Step::Frame {
                    who, keyword, code, ..
                } => Input::Frame {
                    from: id(who),
                    keyword,
                    content,
                    bye_code: (keyword == Keyword::Bye)
                        .then_some(code)
                        .and_then(ByeCode::new),
                },
                Step::Gone(w) => Input::Gone(id(w)),
                Step::RingTimeout => Input::RingTimeout,
                Step::Shutdown => Input::Shutdown,
            }
        }

        /// Feeds one input and checks invariants 2-10.
        fn feed(&mut self, call: &mut Call, input: Input<'_>) -> Result<(), TestCaseError> {
            let before = format!("{call:?}");
            let outcome_before = call.outcome();
            let phase = self.phase;
            if let Input::Gone(p) = input
                && let Some(i) = self.index(p)
            {
                self.parties[i].gone = true;
            }
            let out: Outputs = call.handle(input);
            let ctx = || format!("{input:?} in {phase:?} -> {out:?}\nmachine before: {before}");

            if let Some(o) = outcome_before {
                return after_the_end(call, o, input, &out, &ctx);
            }
            let sender = match input {
                Input::Frame {
                    from,
                    keyword,
                    content,
                    bye_code,
                } => Some((
                    from,
                    self.index(from),
                    keyword,
                    content,
                    bye_code.map(ByeCode::get),
                )),
                _ => None,
            };
            let sender_in = sender.is_some_and(|(_, i, ..)| i.is_some_and(|i| self.live(i)));
            if self.refused(call, &before, sender, sender_in, &out, &ctx)? {
                return Ok(());
            }
            self.check_relays(sender, &out, &ctx)?;
            self.walk_outputs(sender, phase, &out, &ctx)?;
            self.advance_phase(input, phase, sender);

            match call.outcome() {
                Some(outcome) => self.ended(outcome, input, phase, sender_in, &ctx)?,
                None => self.going_on(&ctx)?,
            }
            prop_assert_eq!(call.ring_deadline().is_some(), self.phase == Phase::Ringing);
            prop_assert_eq!(
                call.is_answered(),
                matches!(self.phase, Phase::Answered { .. })
            );
            Ok(())
        }

        /// 2 and 3: whether the input was a frame to refuse, checked to be
        /// refused alone and without effect; otherwise, that nothing was
        /// refused.
        fn refused(
            &self,
            call: &Call,
            before: &str,
            sender: Option<Sender<'_>>,
            sender_in: bool,
            out: &Outputs,
            ctx: &dyn Fn() -> String,
        ) -> Result<bool, TestCaseError> {
            let refusal = |o: &Output| {
                matches!(
                    o,
                    Output::Bye { bye, .. } if matches!(bye.code.get(), 400 | 481)
                )
            };
            if let Some((from, i, keyword, _, code)) = sender {
                let want = if !sender_in {
                    Some(481)
                } else if !self.allowed(i.unwrap(), keyword, code) {
                    Some(400)
                } else {
                    None
                };
                if let Some(want) = want {
                    prop_assert!(
                        matches!(out[..], [Output::Bye { to, bye }] if to == from && bye.code.get() == want),
                        "expected exactly a refusal {} to {}: {}",
                        want,
                        from,
                        ctx()
                    );
                    prop_assert_eq!(format!("{call:?}"), before, "a refusal changed the call");
                    return Ok(true);
                }
            }
            prop_assert!(!out.iter().any(refusal), "unexpected refusal: {}", ctx());
            Ok(false)
        }

        /// 4: where an accepted frame is relayed.
        fn check_relays(
            &self,
            sender: Option<Sender<'_>>,
            out: &Outputs,
            ctx: &dyn Fn() -> String,
        ) -> Result<(), TestCaseError> {
            let mut want_relay = None;
            if let Some((_, Some(i), keyword, _, code)) = sender {
                want_relay = self.relay_to(i, keyword, code);
            }
            let relays: Vec<PeerId> = out
                .iter()
                .filter_map(|o| match o {
                    Output::Relay { to, .. } => Some(*to),
                    _ => None,
                })
                .collect();
            prop_assert_eq!(
                relays,
                want_relay
                    .map(|i| self.parties[i].id)
                    .into_iter()
                    .collect::<Vec<_>>(),
                "relays: {}",
                ctx()
            );
            Ok(())
        }

        /// 5-8: walks the outputs, counting each party's closing byes and
        /// detaches.
        fn walk_outputs(
            &mut self,
            sender: Option<Sender<'_>>,
            phase: Phase,
            out: &Outputs,
            ctx: &dyn Fn() -> String,
        ) -> Result<(), TestCaseError> {
            let mut own_detach = false;
            let mut k = 0;
            while k < out.len() {
                match out[k] {
                    Output::Relay { .. } => {
                        if self.relayed(sender, out, k, ctx)? {
                            k += 1;
                        }
                    }
                    Output::Bye { to, bye } => {
                        let code = bye.code.get();
                        prop_assert!(ENDING_CODES.contains(&code), "code {}: {}", code, ctx());
                        let t = self.index(to);
                        prop_assert!(t.is_some(), "bye to a stranger: {}", ctx());
                        let p = &self.parties[t.unwrap()];
                        prop_assert!(!p.gone && p.status != Status::Out, "to {:?}: {}", p, ctx());
                        self.closing_bye(t.unwrap(), out, k, ctx)?;
                        k += 1;
                    }
                    Output::Detach(p) => {
                        let own = matches!(sender, Some((from, _, Keyword::Bye, ..)) if from == p);
                        prop_assert!(own && !own_detach, "stray Detach({}): {}", p, ctx());
                        own_detach = true;
                        self.own_detach(sender, phase);
                    }
                }
                k += 1;
            }
            if let Some((_, _, Keyword::Bye, ..)) = sender {
                prop_assert!(
                    own_detach,
                    "an accepted bye did not detach its sender: {}",
                    ctx()
                );
            }
            for p in &self.parties {
                let most = if p.status == Status::Transferred || p.closings > 0 && p.detaches == 2 {
                    2
                } else {
                    1
                };
                prop_assert!(p.detaches <= most, "{:?} detached too often: {}", p, ctx());
            }
            Ok(())
        }

        /// One relayed frame, `out[k]`, checked against its sender's;
        /// whether it was a closing bye, which consumed the `Detach` after
        /// it.
        fn relayed(
            &mut self,
            sender: Option<Sender<'_>>,
            out: &Outputs,
            k: usize,
            ctx: &dyn Fn() -> String,
        ) -> Result<bool, TestCaseError> {
            let Output::Relay {
                to,
                keyword,
                content,
            } = out[k]
            else {
                unreachable!()
            };
            let (_, Some(from), kw, c, code) = sender.unwrap() else {
                unreachable!()
            };
            prop_assert_eq!(keyword, kw, "{}", ctx());
            prop_assert!(same(content, c), "content not verbatim: {}", ctx());
            let t = self.index(to).unwrap();
            prop_assert!(t != from, "echo: {}", ctx());
            let p = &self.parties[t];
            prop_assert!(!p.gone && p.status != Status::Out, "to {:?}: {}", p, ctx());
            if keyword == Keyword::Ringing {
                self.ringing_relayed = true;
            }
            if keyword == Keyword::Bye && code != Some(101) {
                self.closing_bye(t, out, k, ctx)?;
                return Ok(true);
            }
            let p = &mut self.parties[t];
            if keyword == Keyword::Bye && p.status == Status::Transferred {
                p.closings += 1;
                prop_assert!(p.closings == 1, "second closing bye: {}", ctx());
            }
            Ok(false)
        }

        /// 5: the closing bye `out[k]` to party `t`, its first, followed by
        /// its `Detach`.
        fn closing_bye(
            &mut self,
            t: usize,
            out: &Outputs,
            k: usize,
            ctx: &dyn Fn() -> String,
        ) -> Result<(), TestCaseError> {
            let p = &mut self.parties[t];
            p.closings += 1;
            prop_assert!(p.closings == 1, "second closing bye: {}", ctx());
            prop_assert!(
                out.get(k + 1) == Some(&Output::Detach(p.id)),
                "closing bye without its Detach: {}",
                ctx()
            );
            p.status = Status::Out;
            p.detaches += 1;
            Ok(())
        }

        /// 6: the sender's own `Detach` after its accepted bye.
        fn own_detach(&mut self, sender: Option<Sender<'_>>, phase: Phase) {
            let (_, Some(i), _, _, code) = sender.unwrap() else {
                unreachable!()
            };
            let s = &mut self.parties[i];
            s.detaches += 1;
            if code == Some(101) {
                s.status = Status::Transferred;
            } else {
                s.status = Status::Out;
                s.hung_up = true;
                if phase == Phase::Ringing && i > 0 {
                    s.left = code;
                }
            }
        }

        /// The phase, as the model sees it after this input.
        fn advance_phase(&mut self, input: Input<'_>, phase: Phase, sender: Option<Sender<'_>>) {
            if let Input::Gone(g) = input
                && phase == Phase::Ringing
                && let Some(i) = self.index(g).filter(|&i| i > 0)
                && self.parties[i].status == Status::In
            {
                self.parties[i].left = Some(410);
            }
            if let Some((_, Some(i), keyword, ..)) = sender {
                match (phase, keyword) {
                    (Phase::Ringing, Keyword::Offer) => {
                        self.phase = Phase::Answered {
                            callee: i,
                            caller_answered: false,
                        }
                    }
                    (Phase::Answered { callee, .. }, Keyword::Answer) if i == 0 => {
                        self.phase = Phase::Answered {
                            callee,
                            caller_answered: true,
                        }
                    }
                    _ => {}
                }
            }
        }

        /// 9: the call goes on.
        fn going_on(&self, ctx: &dyn Fn() -> String) -> Result<(), TestCaseError> {
            let p = &self.parties;
            match self.phase {
                Phase::Ringing => {
                    prop_assert!(self.live(0), "ringing without its caller: {}", ctx());
                    prop_assert!(
                        (1..p.len()).any(|i| self.live(i)),
                        "ringing with no device: {}",
                        ctx()
                    );
                }
                Phase::Answered { callee, .. } => {
                    for (i, d) in p.iter().enumerate().skip(1) {
                        prop_assert!(
                            i == callee || d.status == Status::Out || d.gone,
                            "device {:?} still in an answered call: {}",
                            d,
                            ctx()
                        );
                    }
                    let sides = [&p[0], &p[callee]];
                    for s in sides {
                        prop_assert!(s.status != Status::Out, "{:?} left: {}", s, ctx());
                        prop_assert!(!s.gone || s.status == Status::Transferred, "{}", ctx());
                    }
                    prop_assert!(
                        !sides.iter().all(|s| s.status == Status::Transferred),
                        "both transferred: {}",
                        ctx()
                    );
                    prop_assert!(!sides.iter().all(|s| s.gone), "both gone: {}", ctx());
                }
                Phase::Ended => unreachable!(),
            }
            Ok(())
        }

        /// 10: the call has just ended.
        fn ended(
            &mut self,
            outcome: Outcome,
            input: Input<'_>,
            phase: Phase,
            sender_in: bool,
            ctx: &dyn Fn() -> String,
        ) -> Result<(), TestCaseError> {
            for p in &self.parties {
                prop_assert!(
                    p.gone || p.status != Status::In,
                    "the call ended ({:?}) but {:?} is still in it: {}",
                    outcome,
                    p,
                    ctx()
                );
            }
            let want = self.expected_outcome(input, phase, ctx)?;
            prop_assert!(
                want == Some(outcome),
                "outcome {:?}, expected {:?}: {}",
                outcome,
                want,
                ctx()
            );
            if outcome == Outcome::Transferred {
                prop_assert!(sender_in);
                let Phase::Answered { callee, .. } = phase else {
                    unreachable!()
                };
                if let Input::Frame { from, .. } = input {
                    let i = self.index(from).unwrap();
                    self.parties[i].completed = true;
                }
                prop_assert_eq!(self.parties[0].status, Status::Transferred);
                prop_assert_eq!(self.parties[callee].status, Status::Transferred);
            }
            self.phase = Phase::Ended;
            self.ended_by_shutdown = matches!(input, Input::Shutdown);
            for p in &mut self.parties {
                p.there_at_end = !p.gone;
            }
            Ok(())
        }

        /// The outcome that fits how the call ended (invariant 10).
        fn expected_outcome(
            &self,
            input: Input<'_>,
            phase: Phase,
            ctx: &dyn Fn() -> String,
        ) -> Result<Option<Outcome>, TestCaseError> {
            Ok(match (input, phase) {
                (Input::Shutdown, _) => Some(Outcome::Unavailable),
                (Input::RingTimeout, _) => Some(Outcome::Timeout),
                (Input::Frame { from, .. }, Phase::Ringing) if from == CALLER => {
                    Some(Outcome::Cancelled)
                }
                (
                    Input::Frame {
                        bye_code: Some(ByeCode::DECLINED),
                        ..
                    },
                    Phase::Ringing,
                ) => Some(Outcome::Declined),
                (
                    Input::Frame {
                        bye_code: Some(code),
                        ..
                    },
                    Phase::Ringing,
                ) if self.parties.len() == 2 => Some(code.outcome()),
                (Input::Frame { bye_code, .. }, Phase::Answered { .. }) => {
                    Some(if bye_code == Some(ByeCode::TRANSFERRED) {
                        Outcome::Transferred
                    } else {
                        Outcome::HungUp
                    })
                }
                (Input::Gone(CALLER), Phase::Ringing) => Some(Outcome::Gone),
                (Input::Gone(_), Phase::Answered { .. }) => Some(Outcome::Gone),
                // The last ringing device left.
                (_, Phase::Ringing) => {
                    let codes: Vec<Option<u16>> =
                        self.parties[1..].iter().map(|d| d.left).collect();
                    prop_assert!(codes.iter().all(Option::is_some), "{:?}: {}", codes, ctx());
                    Some(if codes.iter().all(|c| *c == Some(486)) {
                        Outcome::Busy
                    } else if codes.iter().all(|c| *c == Some(410)) {
                        Outcome::Gone
                    } else {
                        Outcome::Unanswered
                    })
                }
                _ => None,
            })
        }

        /// 12: after the call ended, each party that was there had exactly
        /// one ending.
        fn check_endings(&self) -> Result<(), TestCaseError> {
            for p in self.parties.iter().filter(|p| p.there_at_end) {
                match p.status {
                    Status::Out => prop_assert_eq!(
                        u32::from(p.hung_up) + p.closings,
                        1,
                        "{:?} had not exactly one ending",
                        p
                    ),
                    Status::Transferred if self.ended_by_shutdown => {
                        prop_assert_eq!(p.closings, 0)
                    }
                    Status::Transferred => prop_assert_eq!(
                        u32::from(p.completed) + p.closings,
                        1,
                        "{:?} transferred: not exactly one ending",
                        p
                    ),
                    Status::In => prop_assert!(false, "{:?} still in", p),
                }
            }
            Ok(())
        }
    }

    /// Runs a scenario with its completion, checking every invariant.
    pub fn run(s: &Scenario) -> Result<(), TestCaseError> {
        let devices: Vec<PeerId> = (0..s.devices).map(device).collect();
        let invite = String::from(r#"{"caller":{"uri":"a@a.test"},"callee":{"uri":"b@b.test"}}"#);
        let (mut call, out) = Call::start(
            CALLER,
            &devices,
            &invite,
            Instant::now(),
            Duration::from_secs(60),
        );
        // 1.
        prop_assert_eq!(out.len(), devices.len());
        for (o, &d) in out.iter().zip(&devices) {
            prop_assert!(
                matches!(*o, Output::Relay { to, keyword: Keyword::Invite, content: Some(c) } if to == d && std::ptr::eq(c, invite.as_str())),
                "start: {:?}",
                out
            );
        }
        let mut m = Model::ringing(&devices);
        let steps = with_completion(s);
        // The content each frame carries, kept alive for the borrows.
        m.log = steps.iter().map(content_of).collect();
        let log = std::mem::take(&mut m.log);
        for (n, &st) in steps.iter().enumerate() {
            let content = match st {
                Step::Frame {
                    keyword: Keyword::Ringing,
                    ..
                } => None,
                _ => Some(log[n].as_str()),
            };
            let input = m.input(st, content, s.devices);
            m.feed(&mut call, input)?;
        }
        // 11.
        prop_assert!(call.outcome().is_some(), "leaked: {:?}", call);
        m.check_endings()
    }

    impl Model {
        /// A call just started: every party In, ringing.
        fn ringing(devices: &[PeerId]) -> Model {
            let party = |id| Party {
                id,
                status: Status::In,
                gone: false,
                closings: 0,
                hung_up: false,
                completed: false,
                detaches: 0,
                left: None,
                there_at_end: false,
            };
            Model {
                parties: std::iter::once(CALLER)
                    .chain(devices.iter().copied())
                    .map(party)
                    .collect(),
                phase: Phase::Ringing,
                ringing_relayed: false,
                ended_by_shutdown: false,
                log: Vec::new(),
            }
        }
    }

    /// The scenario's steps followed by its completion: `Gone` of every
    /// party in its order, with `RingTimeout` at `ring_at`.
    fn with_completion(s: &Scenario) -> Vec<Step> {
        let mut steps = s.steps.clone();
        for (n, &i) in s.completion.iter().enumerate() {
            if n == s.ring_at {
                steps.push(Step::RingTimeout);
            }
            steps.push(Step::Gone(if i == 0 {
                Who::Caller
            } else {
                Who::Device(i - 1)
            }));
        }
        if s.ring_at == s.completion.len() {
            steps.push(Step::RingTimeout);
        }
        steps
    }

    /// The content text a step's frame carries.
    fn content_of(st: &Step) -> String {
        match st {
            Step::Frame {
                keyword: Keyword::Bye,
                code,
                ..
            } => format!(r#"{{"code":{code}}}"#),
            Step::Frame {
                keyword: Keyword::IceCandidate,
                alt: true,
                ..
            } => "null".to_string(),
            _ => r#"{"type":"offer","sdp":"v=0\r\n"}"#.to_string(),
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any sequence of frames from any side, sockets going away, the ring
    /// timer and shutdown leave the call machine consistent: see the
    /// invariants on `mod machine`.
    #[test]
    fn call_machine_stays_consistent(s in machine::scenario()) {
        machine::run(&s)?;
    }
}

// ---------------------------------------------------------------------------
// Regressions: the cases the properties found, kept as plain tests
// ---------------------------------------------------------------------------

/// A side that has sent bye 101 is no longer a party (protocol §3): its
/// later frames got relayed, a second 101 was relayed again with a second
/// `Detach`, and its bye could still hang the call up (found by
/// `call_machine_stays_consistent`; fixed in src/call.rs).
#[test]
fn a_transferred_side_is_no_longer_a_party() {
    use tokio::time::{Duration, Instant};
    use wspd::call::{Call, Input, Output};
    use wspd::frame::{ByeCode, Keyword, Outcome, ServerBye};

    let frame = |from, keyword, bye_code: Option<u16>| Input::Frame {
        from,
        keyword,
        content: Some("{}"),
        bye_code: bye_code.and_then(ByeCode::new),
    };
    let no_such_call = |to| Output::Bye {
        to,
        bye: ServerBye::NO_SUCH_CALL,
    };
    for (a, b) in [(1, 2), (2, 1)] {
        let (mut c, _) = Call::start(1, &[2], "{}", Instant::now(), Duration::from_secs(60));
        c.handle(frame(2, Keyword::Offer, None));
        c.handle(frame(1, Keyword::Answer, None));
        let out = c.handle(frame(a, Keyword::Bye, Some(101)));
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[1], Output::Detach(a));
        for (kw, code) in [
            (Keyword::IceCandidate, None),
            (Keyword::Offer, None),
            (Keyword::Answer, None),
            (Keyword::Bye, Some(101)),
            (Keyword::Bye, Some(200)),
        ] {
            assert_eq!(c.handle(frame(a, kw, code))[..], [no_such_call(a)]);
        }
        assert_eq!(c.outcome(), None);
        // The other side still talks to it until it transfers too.
        let out = c.handle(frame(b, Keyword::IceCandidate, None));
        assert!(matches!(out[..], [Output::Relay { to, .. }] if to == a));
        c.handle(frame(b, Keyword::Bye, Some(101)));
        assert_eq!(c.outcome(), Some(Outcome::Transferred));
    }
}
