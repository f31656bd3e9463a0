"""The POP2 server's state machine (RFC 937): bytes in, commands out, replies counted. No I/O.

The session feeds received octets with `receive_data`, takes commands with `next_event`,
and answers each with one of the `send_*` methods, which format the reply and move the
state. `TABLE` says, for every state, which commands are allowed, what a success answers
and where it leads. The data phase of RETR is counted here: `send_data` refuses octets past
the announced `=c`, and `end_data` refuses to finish short of it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .wire import (
    MAX_LINE,
    BadCommand,
    Command,
    LocalProtocolError,
    Reason,
    Reply,
    Retr,
    Word,
    greeting,
    parse_arguments,
    parse_word,
    split_line,
)


class State(enum.Enum):
    AUTH = "AUTH"
    MBOX = "MBOX"
    ITEM = "ITEM"
    NEXT = "NEXT"
    DONE = "DONE"


class Answer(enum.Enum):
    """What a successful command is answered with."""

    COUNT = "#n"  # HELO, FOLD
    LENGTH = "=c"  # READ, ACKS, ACKD, NACK
    DATA = "c octets"  # RETR
    BYE = "+ OK"  # QUIT, then close


# (state, command) -> (the answer a success sends, the state after it). A pair not listed is
# a command in the wrong state: `-` and close. Every `-` reply leads to DONE.
TABLE: dict[tuple[State, Word], tuple[Answer, State]] = {
    (State.AUTH, Word.HELO): (Answer.COUNT, State.MBOX),
    (State.AUTH, Word.QUIT): (Answer.BYE, State.DONE),
    (State.MBOX, Word.FOLD): (Answer.COUNT, State.MBOX),
    (State.MBOX, Word.READ): (Answer.LENGTH, State.ITEM),
    (State.MBOX, Word.QUIT): (Answer.BYE, State.DONE),
    (State.ITEM, Word.FOLD): (Answer.COUNT, State.MBOX),
    (State.ITEM, Word.READ): (Answer.LENGTH, State.ITEM),
    (State.ITEM, Word.RETR): (Answer.DATA, State.NEXT),
    (State.ITEM, Word.QUIT): (Answer.BYE, State.DONE),
    (State.NEXT, Word.ACKS): (Answer.LENGTH, State.ITEM),
    (State.NEXT, Word.ACKD): (Answer.LENGTH, State.ITEM),
    (State.NEXT, Word.NACK): (Answer.LENGTH, State.ITEM),
}


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA


@dataclass(frozen=True)
class ProtocolViolation:
    """The client broke the protocol; `reply` is the `-` line to send before closing."""

    reason: Reason
    reply: bytes
    detail: str


class ServerProtocol:
    """One POP2 server connection's protocol state."""

    def __init__(self) -> None:
        self._state = State.AUTH
        self._pending: Word | None = None
        self._buffer = bytearray()
        self._announced = 0  # the last `=c` sent
        self._sent = 0  # octets of the current RETR sent so far

    @property
    def state(self) -> State:
        return self._state

    @property
    def pending(self) -> Word | None:
        """The command waiting for its answer."""
        return self._pending

    @property
    def announced(self) -> int:
        """The `c` of the last `=c` reply: what RETR will send."""
        return self._announced

    @property
    def data_left(self) -> int:
        """Octets of the current RETR still to send."""
        return self._announced - self._sent if self._pending is Word.RETR else 0

    # -- input ---------------------------------------------------------------------------

    @property
    def room(self) -> int:
        """Octets that may be received now without holding more than one command line."""
        return max(MAX_LINE - len(self._buffer), 0)

    def receive_data(self, data: bytes) -> None:
        """Add received octets. A reader that takes at most `room` octets at a time never
        holds more than one command line; `next_event` refuses a longer line either way."""
        self._buffer += data

    def next_event(self) -> Command | ProtocolViolation | NeedData:
        """The next complete command, a violation (then DONE), or NEED_DATA."""
        if self._state is State.DONE:
            raise LocalProtocolError("connection is done")
        if self._pending is not None:
            raise LocalProtocolError(f"answer {self._pending.value} first")
        found = split_line(self._buffer, MAX_LINE)
        if found is None:
            if len(self._buffer) >= MAX_LINE:
                return self._violate(Reason.TOO_LONG, f"{len(self._buffer)}+ octets without a line end")
            return NEED_DATA
        raw, used = found
        del self._buffer[:used]
        parsed = parse_word(raw)
        if isinstance(parsed, BadCommand):
            return self._violate(parsed.reason, parsed.detail)
        word, rest = parsed
        if (self._state, word) not in TABLE:
            return self._violate(Reason.WRONG_STATE, f"{word.value} in state {self._state.value}", word)
        command = parse_arguments(word, rest)
        if isinstance(command, BadCommand):
            return self._violate(command.reason, command.detail, command.word)
        if isinstance(command, Retr) and self._announced == 0:
            return self._violate(Reason.NO_MESSAGE, "RETR of an empty or missing message")
        self._pending = word
        return command

    def _violate(self, reason: Reason, detail: str, word: Word | None = None) -> ProtocolViolation:
        return ProtocolViolation(reason, self.send_error(reason, word), detail)

    # -- output ----------------------------------------------------------------------------

    def greeting(self, host: str, version: str | None = None) -> bytes:
        return greeting(host, version).line()

    def _answer(self, answer: Answer) -> None:
        if self._pending is None or TABLE[(self._state, self._pending)][0] is not answer:
            raise LocalProtocolError(f"{self._pending.value if self._pending else 'nothing'} "
                                     f"is not answered with {answer.value}")
        self._state = TABLE[(self._state, self._pending)][1]
        self._pending = None

    def send_count(self, n: int, folder: str) -> bytes:
        """`#n` for HELO or FOLD."""
        self._answer(Answer.COUNT)
        self._announced = 0
        return Reply("#", f"message in {folder}" if n == 1 else f"messages in {folder}", n).line()

    def send_length(self, c: int, n: int) -> bytes:
        """`=c` for READ, ACKS, ACKD or NACK: message `n` has `c` octets (0: none)."""
        self._answer(Answer.LENGTH)
        self._announced = c
        return Reply("=", f"characters in message {n}" if c else f"no message {n}", c).line()

    def send_data(self, chunk: bytes) -> bytes:
        """Message octets for RETR; refuses any past the announced count."""
        if self._pending is not Word.RETR:
            raise LocalProtocolError("no RETR to send data for")
        if len(chunk) > self.data_left:
            raise LocalProtocolError(f"{self._sent + len(chunk)} octets is more than the announced "
                                     f"{self._announced}")
        self._sent += len(chunk)
        return chunk

    def end_data(self) -> None:
        """RETR is done: exactly the announced octets were sent."""
        if self._pending is Word.RETR and self._sent != self._announced:
            raise LocalProtocolError(f"{self._sent} octets sent, {self._announced} announced")
        self._answer(Answer.DATA)
        self._sent = 0

    def send_bye(self) -> bytes:
        """`+ OK` for QUIT; the connection is then closed."""
        self._answer(Answer.BYE)
        return Reply("+", "OK").line()

    def send_error(self, reason: Reason, word: Word | None = None) -> bytes:
        """A `-` line for any failure; the connection is then closed."""
        self._state = State.DONE
        self._pending = None
        self._buffer.clear()
        return reason.reply(word).line()
