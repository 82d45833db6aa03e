"""Each model reads its own input: prompts that remember their messages, and the RM's own rendering.

A conversational dataset gives a prompt as a list of chat messages. The policy reads those messages
rendered by *its* chat template (:func:`r2m.data.adapters.render_messages`); that text is a
:class:`ChatPrompt`, a ``str`` that also carries the messages. Wherever the text travels (the
prompt set, the K samples of a group, preference rows), a reward model can render the same
conversation with *its own* template, as TRL does: ``apply_chat_template(prompt + [assistant reply])``.
A plain ``str`` prompt (the gold-reward world, HH-RLHF transcripts, TL;DR posts: TRL's standard
format) is read by every model as the same text, prompt then response.

The policy's hidden states h stay on the policy's own tokens (r2m.experience.rollout); only the reward
model's token view changes here.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Optional, Sequence
from r2m.errors import ModelError

log = logging.getLogger("r2m")


class ChatPrompt(str):
    """A prompt's text as the policy reads it, carrying the chat messages it was rendered from."""

    messages: tuple[dict, ...]

    def __new__(cls, text: str, messages: Sequence[dict] = ()) -> "ChatPrompt":
        # ``messages`` has a default so that pickling (str's __getnewargs__ gives the text only) works;
        # the messages then come back through __dict__.
        obj = super().__new__(cls, text)
        obj.messages = tuple({"role": m["role"], "content": m["content"]} for m in messages)
        return obj


def prompt_messages(prompt: str) -> Optional[list[dict]]:
    """The chat messages behind ``prompt``, or None for a plain-text prompt."""
    messages = getattr(prompt, "messages", None)
    return [dict(m) for m in messages] if messages else None


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` prepends a BOS token (so a template's own BOS text must go)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos]


def strip_bos_text(text: str, tokenizer) -> str:
    """``text`` without a leading BOS string when the tokenizer adds BOS itself (no double BOS)."""
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and adds_bos(tokenizer):
        return text[len(bos):]
    return text


class RMText(NamedTuple):
    """What a reward model reads for one (prompt, response)."""

    text: Optional[str]
    """The whole conversation rendered by the RM's template; None: prompt and response as given."""
    prompt: str
    response: str


class RMRenderer:
    """Renders (prompt, response) for one reward model's tokenizer.

    A :class:`ChatPrompt` with an RM that has a chat template: the messages plus the response as the
    assistant's reply, through the RM's template (the policy's end-of-sequence text is removed from
    the response first: the RM's template closes the turn its own way). A ChatPrompt with an RM
    without a template: the policy's prompt text, then the response (logged once). A plain prompt:
    the prompt text, then the response, for every RM (what r2m always did).
    """

    def __init__(self, tokenizer, name: str = "reward model", policy_eos: Optional[str] = None):
        self.tokenizer, self.name, self.policy_eos = tokenizer, name, policy_eos
        self._warned = False

    def reply(self, response: str) -> str:
        eos = self.policy_eos
        return response[: -len(eos)] if eos and response.endswith(eos) else response

    def render(self, prompt: str, response: str) -> RMText:
        messages = prompt_messages(prompt)
        if messages is None:
            return RMText(None, prompt, response)
        if not has_template(self.tokenizer):
            if not self._warned:
                log.info("%s has no chat template: it reads the policy's prompt text followed by the response "
                         "(plain concatenation)", self.name)
                self._warned = True
            return RMText(None, prompt, response)
        chat = [*messages, {"role": "assistant", "content": self.reply(response)}]
        try:
            text = self.tokenizer.apply_chat_template(chat, tokenize=False)
        except Exception as e:  # jinja's TemplateError and whatever a template raises itself

            raise ModelError(f"the chat template of {self.name} cannot render a conversation "
                             f"({type(e).__name__}: {e}); fix the tokenizer's chat_template") from e
        return RMText(strip_bos_text(text, self.tokenizer), prompt, response)

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """Token ids of each row, before truncation."""
        tok = self.tokenizer
        rendered = [self.render(p, r) for p, r in zip(prompts, responses)]
        plain = [i for i, r in enumerate(rendered) if r.text is None]
        out: list[Optional[list[int]]] = [None] * len(rendered)
        if plain:
            # Prompt and response tokenised apart, so the boundary is the one the policy sees.
            p_ids = tok([rendered[i].prompt for i in plain], add_special_tokens=True)["input_ids"]
            r_ids = tok([rendered[i].response for i in plain], add_special_tokens=False)["input_ids"]
            for i, p, r in zip(plain, p_ids, r_ids):
                out[i] = list(p) + list(r)
        chats = [i for i, r in enumerate(rendered) if r.text is not None]
        if chats:
            ids = tok([rendered[i].text for i in chats], add_special_tokens=True)["input_ids"]
            for i, x in zip(chats, ids):
                out[i] = list(x)
        return out  # type: ignore[return-value]
