"""The tokenizer: a ``tokenizers`` backend plus the checkpoint's chat template and special tokens.

Loading follows transformers 5 (``TokenizersBackend``) so that ids and rendered prompts match
``AutoTokenizer`` for the same directory: tokenizer.json is the pipeline, and its post-processor
decides BOS/EOS; tokenizer_config.json names the special tokens and may add tokens;
chat_template.jinja takes precedence over the config's ``chat_template``. One deliberate
difference: when tokenizer.json has no post-processor, the config's ``add_bos_token`` /
``add_eos_token`` still add BOS/EOS (transformers 4 did; 5.x ignores the flags then, which
drops a BOS the checkpoint asks for). The end-of-sequence ids are the union of
generation_config.json, config.json and the tokenizer's eos token, so generation stops on any
id a checkpoint names as an end.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken

from imp_core.text.chat_template import ChatTemplate, ChatTemplateError
from imp_core.errors import CheckpointError, ConfigError

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _read_json(file: Path) -> dict | None:
    """The JSON object in ``file``, or None when the file does not exist."""
    if not file.is_file():
        return None
    from imp_core.checkpoint.json_file import read_json_object

    return read_json_object(file)


def _token_content(value: Any, where: str) -> str | None:
    """A special-token entry written as a string or as an AddedToken dict ``{"content": ...}``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ConfigError(f'{where} must be a string or a {{"content": "..."}} dict, got {value!r}')


def _named_tokens(config: Mapping[str, Any], where: str) -> dict[str, str]:
    """Every ``*_token`` entry (bos_token, eos_token, image_token, ...): these become template variables."""
    named: dict[str, str] = {}
    for key, value in config.items():
        if key.endswith("_token") and (isinstance(value, str) or isinstance(value, Mapping)):
            content = _token_content(value, f"{where}:{key}")
            if content is not None:
                named[key] = content
    extra = config.get("extra_special_tokens")
    if isinstance(extra, Mapping):  # model-specific named tokens, e.g. {"image_token": "<img>"}
        for key, value in extra.items():
            named[str(key)] = _token_content(value, f"{where}:extra_special_tokens.{key}")
    return named


def _extra_special_tokens(config: Mapping[str, Any], where: str) -> list[str]:
    """Unnamed special tokens (``extra_special_tokens`` / legacy ``additional_special_tokens`` lists)."""
    tokens: list[str] = []
    for key in ("extra_special_tokens", "additional_special_tokens"):
        if isinstance(config.get(key), list):
            tokens += [_token_content(value, f"{where}:{key}") for value in config[key]]
    return list(dict.fromkeys(t for t in tokens if t is not None))


def _config_token_ids(config: Mapping[str, Any] | None, key: str, where: str) -> list[int]:
    """``key`` (an int or a list of ints) from a config, also looked up in its ``text_config``."""
    if not config:
        return []
    found: list[int] = []
    for section, name in ((config, key), (config.get("text_config") or {}, f"text_config.{key}")):
        value = section.get(key) if isinstance(section, Mapping) else None
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ConfigError(f"{where}:{name} must be a token id or a list of token ids, got {value!r}")
        found.extend(values)
    return found


def _read_templates(path: Path, config: Mapping[str, Any], config_file: Path) -> dict[str, ChatTemplate]:
    """Named chat templates: the config's, overridden by chat_template.jinja and additional_chat_templates/."""
    templates: dict[str, ChatTemplate] = {}
    inline = config.get("chat_template")
    where = f"{config_file}:chat_template"
    if isinstance(inline, str):
        templates["default"] = ChatTemplate(inline, where)
    elif isinstance(inline, list):
        for entry in inline:
            if not (isinstance(entry, Mapping) and isinstance(entry.get("name"), str)
                    and isinstance(entry.get("template"), str)):
                raise ConfigError(f'{where}: each entry must be {{"name": str, "template": str}}, got {entry!r}')
            templates[entry["name"]] = ChatTemplate(entry["template"], f"{where}[{entry['name']}]")
    elif inline is not None:
        raise ConfigError(f"{where} must be a string or a list of named templates, got {type(inline).__name__}")
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        templates["default"] = ChatTemplate(jinja_file.read_text(encoding="utf-8"), str(jinja_file))
    extra_dir = path / "additional_chat_templates"
    if extra_dir.is_dir():
        for file in sorted(extra_dir.glob("*.jinja")):
            templates[file.name.removesuffix(".jinja")] = ChatTemplate(file.read_text(encoding="utf-8"), str(file))
    return templates


class Tokenizer:
    """Text <-> ids for one checkpoint, its chat template, and the ids that end generation."""

    def __init__(self, backend: tokenizers.Tokenizer, *, named_tokens: Mapping[str, str],
                 templates: Mapping[str, ChatTemplate], eos_token_ids: Iterable[int],
                 add_bos_token: bool | None, add_eos_token: bool | None, override_post_processor: bool = False,
                 extra_special_tokens: Sequence[str] = (), added_tokens: Sequence[AddedToken] = (),
                 source: str = "tokenizer") -> None:
        """Prefer ``from_dir`` / ``from_parts``; this takes ownership of (and edits) ``backend``."""
        self._backend = backend
        self._source = source
        self._named = {k: v for k, v in named_tokens.items() if v is not None}
        self._templates = dict(templates)
        self._add_missing_tokens(added_tokens, extra_special_tokens)
        self.bos_token: str | None = self._named.get("bos_token")
        self.eos_token: str | None = self._named.get("eos_token")
        self.bos_token_id: int | None = self.token_to_id(self.bos_token) if self.bos_token else None
        pad = self._named.get("pad_token")
        self.pad_token_id: int | None = self.token_to_id(pad) if pad else None
        eos_id = self.token_to_id(self.eos_token) if self.eos_token else None
        self.eos_token_ids: frozenset[int] = frozenset([*eos_token_ids, *([eos_id] if eos_id is not None else [])])
        # BOS/EOS come from the post-processor, unless the flags rule: then imp adds the ids itself
        # (TemplateProcessing cannot name tokens with spaces or colons).
        self._own_specials: tuple[list[int], list[int]] | None = None
        if override_post_processor or (backend.post_processor is None and (add_bos_token or add_eos_token)):
            self._own_specials = ([self.bos_token_id] if add_bos_token and self.bos_token_id is not None else [],
                                  [eos_id] if add_eos_token and eos_id is not None else [])
        self._byte_fallback = bool(getattr(backend.model, "byte_fallback", False))
        self.special_token_ids: frozenset[int] = frozenset(
            i for i, t in backend.get_added_tokens_decoder().items() if t.special)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: Path | str) -> Tokenizer:
        """Load the tokenizer files of a Hugging Face checkpoint directory."""
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise CheckpointError(f"{path}: no tokenizer.json (imp needs it to build the tokenizer)")
        try:
            backend = tokenizers.Tokenizer.from_file(str(file))
        except Exception as err:  # the Rust side raises plain Exception subclasses
            raise CheckpointError(f"{file}: not a valid tokenizers file ({' '.join(str(err).split())})") from None
        config_file = path / "tokenizer_config.json"
        config = _read_json(config_file) or {}
        named = _named_tokens(config, str(config_file))
        extras = _extra_special_tokens(config, str(config_file))
        if "added_tokens_decoder" not in config:  # legacy layout, as transformers reads it
            map_file = path / "special_tokens_map.json"
            legacy = _read_json(map_file) or {}
            named.update(_named_tokens(legacy, str(map_file)))
            extras += [t for t in _extra_special_tokens(legacy, str(map_file)) if t not in extras]
        added = cls._added_tokens_decoder(config.get("added_tokens_decoder") or {}, config_file)
        eos_ids = (_config_token_ids(_read_json(path / "generation_config.json"), "eos_token_id",
                                     str(path / "generation_config.json"))
                   + _config_token_ids(_read_json(path / "config.json"), "eos_token_id", str(path / "config.json")))
        for flag in ("add_bos_token", "add_eos_token"):
            if flag in config and not isinstance(config[flag], bool):
                raise ConfigError(f"{config_file}:{flag} must be true or false, got {config[flag]!r}")
        return cls(backend, named_tokens=named, templates=_read_templates(path, config, config_file),
                   eos_token_ids=eos_ids, add_bos_token=config.get("add_bos_token"),
                   add_eos_token=config.get("add_eos_token"), extra_special_tokens=extras, added_tokens=added,
                   source=str(path))

    @classmethod
    def from_parts(cls, tokenizer: tokenizers.Tokenizer, *, chat_template: str | None, bos_token: str | None,
                   eos_token: str | None, eos_token_ids: Iterable[int], add_bos_token: bool | None = None,
                   add_eos_token: bool | None = None, special_tokens: Mapping[str, str] | None = None,
                   source: str = "tokenizer") -> Tokenizer:
        """Build from an already made backend (e.g. from GGUF metadata); takes ownership of ``tokenizer``.

        ``special_tokens`` holds further named tokens (unk_token, pad_token, ...) for the template.
        ``add_bos_token``/``add_eos_token`` (e.g. GGUF's ``tokenizer.ggml.add_bos_token``), when
        given, replace the backend's post-processor; None keeps it.
        """
        named = {**(special_tokens or {}), "bos_token": bos_token, "eos_token": eos_token}
        templates = {"default": ChatTemplate(chat_template, f"{source}:chat_template")} if chat_template else {}
        return cls(tokenizer, named_tokens=named, templates=templates, eos_token_ids=eos_token_ids,
                   add_bos_token=add_bos_token, add_eos_token=add_eos_token,
                   override_post_processor=add_bos_token is not None or add_eos_token is not None, source=source)

    @staticmethod
    def _added_tokens_decoder(entries: Mapping[str, Any], config_file: Path) -> list[AddedToken]:
        if not isinstance(entries, Mapping):
            raise ConfigError(f"{config_file}:added_tokens_decoder must be an object of id -> token")
        tokens = []
        for key, entry in sorted(entries.items(), key=lambda item: int(item[0]) if str(item[0]).isdigit() else -1):
            if not (str(key).isdigit() and isinstance(entry, Mapping) and isinstance(entry.get("content"), str)):
                raise ConfigError(f'{config_file}:added_tokens_decoder["{key}"] must map an id to {{"content": ...}}')
            flags = {k: bool(entry[k]) for k in ("single_word", "lstrip", "rstrip", "normalized", "special")
                     if k in entry}
            tokens.append(AddedToken(entry["content"], **flags))
        return tokens

    def _add_missing_tokens(self, added_tokens: Sequence[AddedToken], extra_special: Sequence[str]) -> None:
        """Register tokens the config knows and tokenizer.json does not (transformers does the same)."""
        known = {t.content for t in self._backend.get_added_tokens_decoder().values()}
        wanted: list[AddedToken] = [t for t in added_tokens if t.content not in known]
        queued = {t.content for t in wanted}
        for content in [*self._named.values(), *extra_special]:
            if content not in known and content not in queued:
                wanted.append(AddedToken(content, special=True, normalized=False))
                queued.add(content)
        for token in wanted:
            if token.special:
                self._backend.add_special_tokens([token])
            else:
                self._backend.add_tokens([token])

    # ---- queries ------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added tokens included (``len(hf_tokenizer)``)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def has_chat_template(self) -> bool:
        return bool(self._templates)

    @property
    def special_tokens(self) -> dict[str, str]:
        """The named special tokens (bos_token, eos_token, pad_token, ...) the template sees."""
        return dict(self._named)

    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._backend

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    def is_byte_piece(self, token_id: int) -> bool:
        """True for a byte-fallback token ``<0xNN>`` of a tokenizer that uses byte fallback."""
        return self._byte_fallback and bool(_BYTE_PIECE.fullmatch(self._backend.id_to_token(token_id) or ""))

    # ---- text <-> ids -------------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds BOS/EOS as the post-processor says."""
        if self._own_specials is None:
            return self._backend.encode(text, add_special_tokens=add_special_tokens).ids
        ids = self._backend.encode(text, add_special_tokens=False).ids
        return [*self._own_specials[0], *ids, *self._own_specials[1]] if add_special_tokens else ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True,
                            **template_kwargs: Any) -> str:
        """The prompt string for ``messages`` (``tools=``, ``enable_thinking=``, ... go to the template)."""
        return self._template(template_kwargs.get("tools")).render(
            messages, add_generation_prompt=add_generation_prompt, special_tokens=self._named, **template_kwargs)

    def encode_chat(self, messages: list[dict], *, add_generation_prompt: bool = True,
                    **template_kwargs: Any) -> list[int]:
        """Render then encode without adding special tokens (the template writes BOS itself)."""
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **template_kwargs)
        return self.encode(text, add_special_tokens=False)

    def _template(self, tools: Any) -> ChatTemplate:
        if not self._templates:
            raise ChatTemplateError(f"{self._source}: the tokenizer has no chat template "
                                    "(no chat_template.jinja and no chat_template in tokenizer_config.json)")
        if tools is not None and "tool_use" in self._templates:
            return self._templates["tool_use"]
        if "default" in self._templates:
            return self._templates["default"]
        raise ChatTemplateError(f"{self._source}: several chat templates {sorted(self._templates)} and none "
                                "named 'default'")

    def stream_decoder(self, *, skip_special_tokens: bool = True) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)


class StreamDecoder:
    """Incremental detokenizer: ``"".join(pushes) + flush() == tokenizer.decode(all ids)``.

    Text is decoded over a short window of recent ids (so decoders that treat the first token
    specially stay consistent) and held back while it ends in an incomplete UTF-8 sequence
    (U+FFFD) or while byte-fallback pieces are still arriving.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # window start: decoding from here is consistent with the full decode
        self._read = 0  # ids before this are already emitted

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (possibly empty)."""
        token_id = int(token_id)
        self._ids.append(token_id)
        if self._tokenizer.is_byte_piece(token_id):
            return ""  # a byte run is decoded as one unit; wait for its end
        if self._skip and token_id in self._tokenizer.special_token_ids:
            return ""  # skipped, so the ids around it may still join (e.g. one byte run)
        return self._advance(final=False)

    def flush(self) -> str:
        """Return whatever is still held back (an unfinished character decodes as U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix:self._read], skip_special_tokens=self._skip)
        after = decode(self._ids[self._prefix:], skip_special_tokens=self._skip)
        if not final and (len(after) <= len(before) or after.endswith("\ufffd")):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before):]
