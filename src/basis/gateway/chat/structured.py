"""Structured output and tool calls by schema (issue #14 items 2 and 5).

A request's ``response_format`` (``json_object`` / ``json_schema``) or its ``tools`` with a
``tool_choice`` of ``"required"`` or a named function becomes one ``Constraint``: a JSON Schema
that the engine decodes under (llama.cpp grammar, sglang ``json_schema``) and that the gateway
checks the final text against with ``jsonschema``. Only keywords that every engine enforces are
admitted, so output that breaks the schema is always the serving side's fault (the job fails).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema

from basis.engines.base import supports_json_schema
from basis.gateway.errors import APIError

NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
LOCAL_REF_RE = re.compile(r"^#/(\$defs|definitions)/([^/]+)$")
MAX_SCHEMA_BYTES = 16_384
MAX_DEPTH = 16
TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
# Keywords the engines' converters enforce (llama.cpp's json_schema_to_gbnf, sglang's xgrammar).
# Annotations are accepted and have no effect. Anything else (pattern, format, minimum, oneOf,
# allOf, not, ...) is refused: a grammar that cannot enforce it would let valid decoding fail.
STRUCTURAL = frozenset({"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
                        "enum", "const", "anyOf", "$ref", "$defs", "definitions", "minLength", "maxLength"})
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment"})
PARAMETERLESS = {"type": "object", "properties": {}, "additionalProperties": False}


def _bad(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def check_schema(schema: Any, param: str) -> dict[str, Any]:
    """A schema the engines can enforce, or a 400 naming what is wrong and where."""
    if not isinstance(schema, dict):
        raise _bad("The schema must be a JSON object.", param, "invalid_schema")
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise _bad(f"The schema is larger than {MAX_SCHEMA_BYTES} bytes.", param, "invalid_schema")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise _bad(f"Invalid JSON schema at {where}: {exc.message}", param, "invalid_schema") from None
    _walk(schema, param, "#", 0, schema)
    return schema


def _walk(node: Any, param: str, where: str, depth: int, root: dict[str, Any]) -> None:
    if not isinstance(node, dict):  # true/false subschemas included: the grammar converters take objects only
        raise _bad(f"The subschema at {where} must be an object (boolean subschemas are not supported).", param,
                   "unsupported_schema_keyword")
    if depth > MAX_DEPTH:
        raise _bad(f"The schema is nested deeper than {MAX_DEPTH} levels.", param, "invalid_schema")
    for key in node:
        if key not in STRUCTURAL and key not in ANNOTATIONS:
            raise _bad(f"The schema keyword '{key}' (at {where}) is not supported. Supported: "
                       f"{', '.join(sorted(STRUCTURAL))}.", param, "unsupported_schema_keyword")
    kind = node.get("type")
    if isinstance(kind, list) and (STRUCTURAL & set(node)) - {"type"}:
        raise _bad(f"A list of types (at {where}) cannot be combined with other keywords; use anyOf.",
                   param, "unsupported_schema_keyword")
    if ("minLength" in node or "maxLength" in node) and kind != "string":
        raise _bad(f"minLength/maxLength (at {where}) need \"type\": \"string\".", param, "unsupported_schema_keyword")
    if ("minItems" in node or "maxItems" in node) and (kind != "array" or "items" not in node):
        raise _bad(f"minItems/maxItems (at {where}) need \"type\": \"array\" with items.", param,
                   "unsupported_schema_keyword")
    if "additionalProperties" in node and not isinstance(node["additionalProperties"], bool):
        raise _bad(f"additionalProperties (at {where}) must be true or false.", param, "unsupported_schema_keyword")
    for key in ("enum", "const"):
        if key in node and _has_escapes(node[key]):
            raise _bad(f"{key} (at {where}) holds a string with '\"', '\\' or a control character, which the "
                       "grammar converters cannot express.", param, "unsupported_schema_keyword")
    if _has_escapes(list(node.get("properties", {}))):
        raise _bad(f"A property name (at {where}) holds '\"', '\\' or a control character, which the grammar "
                   "converters cannot express.", param, "unsupported_schema_keyword")
    if "enum" in node and not node["enum"]:
        raise _bad(f"enum (at {where}) must list at least one value.", param, "invalid_schema")
    ref = node.get("$ref")
    if ref is not None:
        m = LOCAL_REF_RE.match(ref)
        if m is None:
            raise _bad(f"Only references to the root's definitions (#/$defs/<name>) are supported, not '{ref}' "
                       f"(at {where}).", param, "unsupported_schema_keyword")
        if m.group(2) not in root.get(m.group(1), {}):
            raise _bad(f"The reference '{ref}' (at {where}) points at no definition.", param, "invalid_schema")
    props = node.get("properties", {})
    missing = [r for r in node.get("required", []) if r not in props]
    if missing:
        raise _bad(f"'required' names properties the schema does not define (at {where}): {missing}.", param,
                   "invalid_schema")
    for name, sub in props.items():
        _walk(sub, param, f"{where}/properties/{name}", depth + 1, root)
    for defs in ("$defs", "definitions"):
        for name, sub in node.get(defs, {}).items():
            _walk(sub, param, f"{where}/{defs}/{name}", depth + 1, root)
    for i, sub in enumerate(node.get("anyOf", [])):
        _walk(sub, param, f"{where}/anyOf/{i}", depth + 1, root)
    if "items" in node:
        if node["items"] == {}:  # llama.cpp's converter reads an empty items schema as a tuple
            raise _bad(f"items (at {where}) must not be an empty schema: leave items out for any values.", param,
                       "unsupported_schema_keyword")
        _walk(node["items"], param, f"{where}/items", depth + 1, root)


def _has_escapes(value: Any) -> bool:
    """Whether a JSON value holds a string that JSON writes with a backslash escape (other than
    \\uXXXX): llama.cpp's converter copies such escapes into grammar literals it cannot parse."""
    if isinstance(value, str):
        return any(c in '"\\' or ord(c) < 0x20 for c in value)
    if isinstance(value, list):
        return any(_has_escapes(v) for v in value)
    if isinstance(value, dict):
        return any(_has_escapes(k) or _has_escapes(v) for k, v in value.items())
    return False


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class Constraint:
    """What the output must be. ``kind`` "tool": ``tool`` names the one function called (the
    output is its arguments), or None when the model picks among ``tools`` (the output is
    ``{"name": ..., "arguments": ...}``)."""

    kind: Literal["json_object", "json_schema", "tool"]
    schema: dict[str, Any]
    tools: tuple[Tool, ...] = ()
    tool: Tool | None = None
    _validator: Any = field(default=None, compare=False, repr=False)

    def problem(self, text: str) -> str | None:
        """Why ``text`` breaks the constraint, or None when it is valid."""
        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"the output is not JSON ({exc})"
        validator = self._validator or jsonschema.Draft202012Validator(self.schema)
        object.__setattr__(self, "_validator", validator)
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"the output breaks the schema at {where}: {error.message}"

    def tool_calls(self, text: str, job_id: str) -> list[dict[str, Any]]:
        """The OpenAI ``tool_calls`` of the output (``arguments`` is JSON text, as OpenAI sends it)."""
        name, arguments = (self.tool.name if self.tool else ""), text.strip()
        try:
            value = json.loads(text)
            if self.tool is None and isinstance(value, dict):
                name, arguments = str(value.get("name", "")), json.dumps(value.get("arguments"))
            elif self.tool is not None:
                arguments = json.dumps(value)
        except ValueError:
            pass  # cut short by max_tokens (finish_reason "length"): the raw text, as OpenAI does
        call_id = "call_" + job_id.replace("-", "")[:24]
        return [{"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]

    def instructions(self) -> str | None:
        """The system text that tells the model which call to make (the grammar makes it well-formed)."""
        if self.kind != "tool":
            return None
        if self.tool is not None:
            t = self.tool
            return (f"Call the function {t.name}{': ' + t.description if t.description else ''}. Reply with only "
                    f"its arguments, a JSON object matching this schema: {json.dumps(t.parameters)}")
        lines = [f"- {t.name}: {t.description} Parameters: {json.dumps(t.parameters)}" for t in self.tools]
        return ("Call one of these functions. Reply with only a JSON object "
                '{"name": <function name>, "arguments": <its arguments>}.\nFunctions:\n' + "\n".join(lines))


def _response_format(fmt: Any) -> Constraint | None:
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise _bad("response_format must be an object with a 'type'.", "response_format")
    kind = fmt["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint("json_object", {"type": "object"})
    if kind != "json_schema":
        raise _bad(f"Unsupported response_format type '{kind}': use text, json_object or json_schema.",
                   "response_format.type")
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise _bad("response_format.json_schema must be an object with 'name' and 'schema'.",
                   "response_format.json_schema")
    if not isinstance(spec.get("name"), str) or not NAME_RE.match(spec["name"]):
        raise _bad("response_format.json_schema.name must be 1 to 64 letters, digits, '_' or '-'.",
                   "response_format.json_schema.name")
    schema = spec.get("schema", {})
    return Constraint("json_schema", check_schema(schema, "response_format.json_schema.schema"))


def _tools(raw: Any) -> tuple[Tool, ...]:
    if not isinstance(raw, list) or not raw:
        raise _bad("tools must be a non-empty list of functions.", "tools")
    tools: list[Tool] = []
    for i, t in enumerate(raw):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
            raise _bad(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}.", f"tools[{i}]")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise _bad(f"tools[{i}].function.name must be 1 to 64 letters, digits, '_' or '-'.",
                       f"tools[{i}].function.name")
        if any(x.name == name for x in tools):
            raise _bad(f"Two tools are named '{name}'.", f"tools[{i}].function.name")
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise _bad(f"tools[{i}].function.description must be a string.", f"tools[{i}].function.description")
        params = fn.get("parameters", PARAMETERLESS)
        param = f"tools[{i}].function.parameters"
        check_schema(params, param)
        if params.get("type") != "object":
            raise _bad("A function's parameters must be a schema with \"type\": \"object\".", param)
        tools.append(Tool(name, description, params))
    return tuple(tools)


def _prefix_refs(node: Any, prefix: str) -> Any:
    """A copy of ``node`` whose local references point at ``#/$defs/<prefix><name>``."""
    if isinstance(node, list):
        return [_prefix_refs(x, prefix) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "$ref" and isinstance(v, str):
            out[k] = "#/$defs/" + prefix + v.rsplit("/", 1)[-1]
        elif k in ("$defs", "definitions"):
            continue
        elif k == "properties" and isinstance(v, dict):
            out[k] = {name: _prefix_refs(sub, prefix) for name, sub in v.items()}
        else:
            out[k] = _prefix_refs(v, prefix)
    return out


def _choice_schema(tools: tuple[Tool, ...]) -> dict[str, Any]:
    """Any one call: {"name": <const>, "arguments": <its parameters>}; each tool's definitions are
    hoisted to the root under a prefix of their own (their references follow)."""
    defs: dict[str, Any] = {}
    options = []
    for i, t in enumerate(tools):
        prefix = f"t{i}_"
        for key in ("$defs", "definitions"):
            for name, sub in t.parameters.get(key, {}).items():
                defs[prefix + name] = _prefix_refs(sub, prefix)
        options.append({"type": "object", "properties": {"name": {"const": t.name},
                                                         "arguments": _prefix_refs(t.parameters, prefix)},
                        "required": ["name", "arguments"], "additionalProperties": False})
    schema: dict[str, Any] = {"anyOf": options}
    if defs:
        schema["$defs"] = defs
    return schema


def constraint_for(extra: dict[str, Any], model: str, stop: list[str] | None = None) -> Constraint | None:
    """The request's constraint (from its extra fields), or None; a 400 for anything malformed."""
    for legacy in ("functions", "function_call"):
        if extra.get(legacy) is not None:
            raise _bad(f"'{legacy}' is deprecated and not supported: use 'tools' and 'tool_choice'.", legacy,
                       "unsupported_parameter")
    fmt = _response_format(extra.get("response_format"))
    raw_tools, choice = extra.get("tools"), extra.get("tool_choice")
    if raw_tools is None:
        if choice not in (None, "none"):
            raise _bad("tool_choice needs tools.", "tool_choice")
        return fmt
    tools = _tools(raw_tools)
    if choice is None or choice == "auto":
        raise _bad(f"tool_choice 'auto' needs a chat template that supports tools, and the template bound to "
                   f"'{model}' has none. Use tool_choice \"required\" or name the function: "
                   '{"type": "function", "function": {"name": "..."}}.', "tool_choice", "unsupported_parameter")
    if choice == "none":
        return fmt
    if fmt is not None:
        raise _bad("response_format cannot be combined with a forced tool call.", "response_format")
    if stop:  # a stop sequence would cut the call's JSON short
        raise _bad("stop sequences cannot be combined with a forced tool call.", "stop")
    if choice == "required":
        if len(tools) == 1:
            return Constraint("tool", tools[0].parameters, tools, tools[0])
        return Constraint("tool", _choice_schema(tools), tools, None)
    fn = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(fn, dict):
        raise _bad('tool_choice must be "none", "auto", "required" or {"type": "function", "function": '
                   '{"name": ...}}.', "tool_choice")
    named = next((t for t in tools if t.name == fn.get("name")), None)
    if named is None:
        raise _bad(f"tool_choice names '{fn.get('name')}', which is not among the tools.", "tool_choice")
    return Constraint("tool", named.parameters, tools, named)


def render_history(messages: list[Any], instructions: str | None) -> list[dict[str, Any]]:
    """Messages any chat template renders: a ``tool`` result becomes a user turn naming its call,
    an assistant's ``tool_calls`` become its text, and the tool instructions lead as a system turn."""
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for i, m in enumerate(messages):
        d = m.model_dump(exclude_none=True) if hasattr(m, "model_dump") else dict(m)
        text = m.text() if hasattr(m, "text") else str(d.get("content") or "")
        if d.get("role") == "tool":
            call_id = d.get("tool_call_id")
            if not isinstance(call_id, str):
                raise _bad(f"messages[{i}] (role tool) needs a tool_call_id.", f"messages[{i}].tool_call_id")
            out.append({"role": "user", "content": f"Result of {names.get(call_id, 'the call')} ({call_id}): {text}"})
            continue
        calls = d.get("tool_calls")
        if d.get("role") == "assistant" and calls:
            lines = [text] if text else []
            if not isinstance(calls, list):
                raise _bad(f"messages[{i}].tool_calls must be a list.", f"messages[{i}].tool_calls")
            for j, c in enumerate(calls):
                fn = c.get("function") if isinstance(c, dict) else None
                if (not isinstance(fn, dict) or not isinstance(fn.get("name"), str)
                        or not isinstance(fn.get("arguments", ""), str) or not isinstance(c.get("id"), str)):
                    raise _bad(f"messages[{i}].tool_calls[{j}] must have an id and a function with a name and "
                               "arguments (a JSON string).", f"messages[{i}].tool_calls[{j}]")
                names[c["id"]] = fn["name"]
                lines.append(json.dumps({"name": fn["name"], "arguments": fn.get("arguments", "")}))
            out.append({"role": "assistant", "content": "\n".join(lines)})
            continue
        out.append({"role": d.get("role"), "content": text})
    if instructions:
        out.insert(0, {"role": "system", "content": instructions})
    return out


# -- the response of a forced tool call ------------------------------------------------------


def is_tool_call(plan: Any) -> bool:
    return plan is not None and plan.constraint is not None and plan.constraint.kind == "tool"


def tool_finish(finish_reason: str | None) -> str | None:
    return "tool_calls" if finish_reason == "stop" else finish_reason


async def as_tool_call(plan: Any, events: AsyncGenerator[tuple[str, Any], None],
                       text: Callable[[], str], job_id: str) -> AsyncGenerator[tuple[str, Any], None]:
    """A forced tool call's events: its text is held back (the gateway validates it first) and
    sent as one ``tool_calls`` delta once the job ends."""
    try:
        async for kind, value in events:
            if kind == "delta":
                continue
            if kind == "end":
                yield "tool_calls", plan.constraint.tool_calls(text(), job_id)
                yield "end", tool_finish(value)
            else:
                yield kind, value
    finally:
        await events.aclose()


def engine_can_serve(engine: Any, constraint: Constraint | None) -> bool:
    """Whether an engine may serve a job under ``constraint`` (it must decode under the schema)."""
    return constraint is None or supports_json_schema(engine)


def needs_history_rendering(messages: list[Any]) -> bool:
    return any(m.role == "tool" or (m.model_extra or {}).get("tool_calls") for m in messages)
