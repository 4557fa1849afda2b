"""Classifies every change between two contract trees as compatible or breaking.

A contract tree has the layout of ``contracts/``: ``proto/*.proto``, ``openapi/openapi.json``,
``config-schema/config.schema.json`` and ``VERSION``; the baseline, a git ref's files and the
current contracts are all read as such trees.

Proto is compared on descriptors compiled by protoc (FileDescriptorSets), never on text: a removed
message, field, enum value, RPC or service, a renumbered field (same name, new number, or a
number reused by another name), a changed field type, cardinality or oneof, a changed RPC
request/response type or streaming mode are breaking; additions are compatible.

OpenAPI and the config schema are compared as JSON Schemas in a direction: what a client sends
(request bodies, parameters, config files) may not be narrowed, what it receives may not lose
anything. Removed paths, operations, response statuses or media types, new required request
properties or parameters, a narrowed request enum or bound, a removed response property and a
changed type are breaking; new optional request properties, new paths and new response
properties are compatible.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import descriptor_pb2 as d
from llorch.tools.contracts import ContractError, protogen
from llorch.tools.contracts.version import VERSION_FILE

OPENAPI = Path("openapi", "openapi.json")
CONFIG_SCHEMA = Path("config-schema", "config.schema.json")
PROTO = Path("proto")
TREE_PATHS = (PROTO, OPENAPI, CONFIG_SCHEMA, Path(VERSION_FILE))
_D = TypeVar("_D", d.DescriptorProto, d.EnumDescriptorProto, d.ServiceDescriptorProto)
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@dataclass(frozen=True, order=True)
class Change:
    surface: str  # proto | openapi | config-schema
    where: str
    what: str
    breaking: bool

    def to_json(self) -> dict[str, str]:
        return {"surface": self.surface, "where": self.where, "what": self.what,
                "kind": "breaking" if self.breaking else "compatible"}

    def __str__(self) -> str:
        kind = "BREAKING  " if self.breaking else "compatible"
        return f"{kind} {self.surface:13} {self.where}: {self.what}"


# ---------------------------------------------------------------------------------------- proto

@dataclass
class _ProtoIndex:
    messages: dict[str, d.DescriptorProto] = field(default_factory=dict)
    enums: dict[str, d.EnumDescriptorProto] = field(default_factory=dict)
    services: dict[str, d.ServiceDescriptorProto] = field(default_factory=dict)


def _index(fds: d.FileDescriptorSet) -> _ProtoIndex:
    index = _ProtoIndex()

    def walk(prefix: str, messages: Any, enums: Any) -> None:
        for enum in enums:
            index.enums[f"{prefix}.{enum.name}"] = enum
        for message in messages:
            name = f"{prefix}.{message.name}"
            index.messages[name] = message
            walk(name, message.nested_type, message.enum_type)

    for file in fds.file:
        prefix = file.package
        walk(prefix, file.message_type, file.enum_type)
        for service in file.service:
            index.services[f"{prefix}.{service.name}"] = service
    return index


def _field_type(f: d.FieldDescriptorProto) -> str:
    if f.type in (d.FieldDescriptorProto.TYPE_MESSAGE, d.FieldDescriptorProto.TYPE_ENUM):
        return f.type_name.lstrip(".")
    return d.FieldDescriptorProto.Type.Name(f.type).removeprefix("TYPE_").lower()


def _cardinality(f: d.FieldDescriptorProto) -> str:
    if f.label == d.FieldDescriptorProto.LABEL_REPEATED:
        return "repeated"
    if f.label == d.FieldDescriptorProto.LABEL_REQUIRED:
        return "required"
    return "optional (explicit presence)" if f.proto3_optional else "singular"


def _oneof(message: d.DescriptorProto, f: d.FieldDescriptorProto) -> str:
    if f.HasField("oneof_index") and not f.proto3_optional:
        return message.oneof_decl[f.oneof_index].name
    return ""


# req: CTR-1012, CTR-1014, CTR-1802
def _compare_fields(name: str, old: d.DescriptorProto, new: d.DescriptorProto) -> Iterator[Change]:
    new_by_number = {f.number: f for f in new.field}
    new_by_name = {f.name: f for f in new.field}
    old_numbers = {f.number for f in old.field}
    for f in old.field:
        where = f"{name}.{f.name}"
        g = new_by_number.get(f.number)
        if g is None:
            moved = new_by_name.get(f.name)
            if moved is not None:
                yield Change("proto", where, f"field renumbered {f.number} -> {moved.number}", True)
            else:
                yield Change("proto", where, f"field {f.number} removed", True)
            continue
        if g.name != f.name:
            yield Change("proto", where, f"field number {f.number} reused by '{g.name}'", True)
            continue
        if _field_type(f) != _field_type(g):
            yield Change("proto", where, f"type changed {_field_type(f)} -> {_field_type(g)}", True)
        if _cardinality(f) != _cardinality(g):
            yield Change("proto", where, f"cardinality changed {_cardinality(f)} -> {_cardinality(g)}", True)
        if _oneof(old, f) != _oneof(new, g):
            yield Change("proto", where,
                         f"oneof changed '{_oneof(old, f)}' -> '{_oneof(new, g)}'", True)
    for g in new.field:
        if g.number not in old_numbers and g.name not in {f.name for f in old.field}:
            yield Change("proto", f"{name}.{g.name}", f"field {g.number} added", False)


def _compare_enum(name: str, old: d.EnumDescriptorProto, new: d.EnumDescriptorProto) -> Iterator[Change]:
    new_by_number = {v.number: v for v in new.value}
    new_by_name = {v.name: v for v in new.value}
    for v in old.value:
        where = f"{name}.{v.name}"
        w = new_by_number.get(v.number)
        if w is None:
            moved = new_by_name.get(v.name)
            what = (f"enum value renumbered {v.number} -> {moved.number}" if moved
                    else f"enum value {v.number} removed")
            yield Change("proto", where, what, True)
        elif w.name != v.name:
            yield Change("proto", where, f"enum value {v.number} renamed to '{w.name}'", True)
    old_numbers, old_names = {v.number for v in old.value}, {v.name for v in old.value}
    for w in new.value:
        if w.number not in old_numbers and w.name not in old_names:
            yield Change("proto", f"{name}.{w.name}", f"enum value {w.number} added", False)


def _streaming(m: d.MethodDescriptorProto) -> str:
    return {(False, False): "unary", (False, True): "server streaming",
            (True, False): "client streaming", (True, True): "bidi streaming"}[
        (m.client_streaming, m.server_streaming)]


def _compare_service(name: str, old: d.ServiceDescriptorProto,
                     new: d.ServiceDescriptorProto) -> Iterator[Change]:
    new_methods = {m.name: m for m in new.method}
    for m in old.method:
        where = f"{name}.{m.name}"
        n = new_methods.get(m.name)
        if n is None:
            yield Change("proto", where, "RPC removed", True)
            continue
        for label, a, b in (("request type", m.input_type, n.input_type),
                            ("response type", m.output_type, n.output_type),
                            ("streaming", _streaming(m), _streaming(n))):
            if a != b:
                yield Change("proto", where, f"{label} changed {a.lstrip('.')} -> {b.lstrip('.')}", True)
    old_names = {m.name for m in old.method}
    for n in new.method:
        if n.name not in old_names:
            yield Change("proto", f"{name}.{n.name}", "RPC added", False)


def _compare_named(kind: str, olds: dict[str, _D], news: dict[str, _D],
                   compare: Callable[[str, _D, _D], Iterator[Change]]) -> Iterator[Change]:
    for name in sorted(olds.keys() | news.keys()):
        if name not in news:
            yield Change("proto", name, f"{kind} removed", True)
        elif name not in olds:
            yield Change("proto", name, f"{kind} added", False)
        else:
            yield from compare(name, olds[name], news[name])


# req: CTR-1012
def compare_proto(old: d.FileDescriptorSet, new: d.FileDescriptorSet) -> list[Change]:
    a, b = _index(old), _index(new)
    return [*_compare_named("message", a.messages, b.messages, _compare_fields),
            *_compare_named("enum", a.enums, b.enums, _compare_enum),
            *_compare_named("service", a.services, b.services, _compare_service)]


# ----------------------------------------------------------------------------- JSON Schema/OpenAPI

_TIGHTER_IF_SMALLER = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_TIGHTER_IF_LARGER = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")


class _Doc:
    """One JSON document whose local ``$ref``s (``#/components/...``, ``#/$defs/...``) resolve."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def resolve(self, node: Any) -> tuple[Any, str]:
        ref = ""
        seen: set[str] = set()
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if not ref.startswith("#/") or ref in seen:
                raise ContractError(f"cannot resolve $ref {ref!r} (only local, acyclic refs)")
            seen.add(ref)
            target: Any = self.document
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            node = {**target, **siblings} if siblings else target
        return node, ref


def _types(schema: dict[str, Any]) -> tuple[frozenset[str], bool]:
    """The declared types without null, and whether null is accepted (3.1 lists or 3.0 nullable)."""
    declared = schema.get("type")
    types = set(declared) if isinstance(declared, list) else ({declared} if declared else set())
    nullable = "null" in types or schema.get("nullable") is True
    return frozenset(types - {"null"}), nullable


def _enum_values(schema: dict[str, Any]) -> list[Any] | None:
    """``enum``, or pydantic's ``const`` for a one-value Literal, as a list; None if unrestricted."""
    if isinstance(schema.get("enum"), list):
        return list(schema["enum"])
    return [schema["const"]] if "const" in schema else None


def _ref_names(members: list[Any]) -> dict[str, Any] | None:
    """Union members keyed by the name they reference, or None unless every member is a ``$ref``."""
    if not all(isinstance(m, dict) and isinstance(m.get("$ref"), str) for m in members):
        return None
    return {m["$ref"].rsplit("/", 1)[-1]: m for m in members}


@dataclass
class _SchemaDiff:
    """Walks two schemas side by side; ``request`` picks the direction of the rules."""

    surface: str
    old: _Doc
    new: _Doc
    changes: list[Change] = field(default_factory=list)

    def add(self, where: str, what: str, breaking: bool) -> None:
        self.changes.append(Change(self.surface, where, what, breaking))

    def normalise(self, doc: _Doc, node: Any) -> tuple[dict[str, Any], bool, str]:
        """Resolve refs and unwrap pydantic's ``anyOf: [X, null]`` / single ``allOf`` into X."""
        schema, ref = doc.resolve(node)
        if not isinstance(schema, dict):
            return {}, False, ref
        nullable = False
        for key in ("anyOf", "oneOf", "allOf"):
            alternatives = schema.get(key)
            if not isinstance(alternatives, list):
                continue
            resolved = [doc.resolve(a) for a in alternatives]
            rest = [(s, r) for s, r in resolved if not (isinstance(s, dict) and s.get("type") == "null")]
            if len(rest) == 1 and (key == "allOf" or len(rest) < len(resolved)):
                nullable = nullable or len(rest) < len(resolved)
                inner, inner_ref = rest[0]
                outer = {k: v for k, v in schema.items() if k != key}
                schema, ref = {**inner, **outer}, inner_ref or ref
        _, declared_null = _types(schema)
        return schema, nullable or declared_null, ref

    def compare(self, old: Any, new: Any, where: str, request: bool,
                ancestors: frozenset[tuple[str, str]] = frozenset()) -> None:
        o, o_null, o_ref = self.normalise(self.old, old)
        n, n_null, n_ref = self.normalise(self.new, new)
        if (o_ref or n_ref) and (o_ref, n_ref) in ancestors:
            return  # a recursive schema: this pair is already being compared further up
        ancestors = ancestors | {(o_ref, n_ref)}
        if request and o_null and not n_null:
            self.add(where, "no longer accepts null", True)
        if not request and n_null and not o_null:
            self.add(where, "may now be null", True)
        o_types, _ = _types(o)
        n_types, _ = _types(n)
        if o_types != n_types:
            self.add(where, f"type changed {sorted(o_types) or 'any'} -> {sorted(n_types) or 'any'}", True)
            return
        self._enum(o, n, where, request)
        if request:
            self._bounds(o, n, where)
        self._properties(o, n, where, request, ancestors)
        if "items" in o and "items" in n:
            self.compare(o["items"], n["items"], f"{where}[]", request, ancestors)
        o_extra, n_extra = o.get("additionalProperties"), n.get("additionalProperties")
        if request and n_extra is False and o_extra is not False and "properties" in o:
            self.add(where, "no longer accepts additional properties", True)
        if isinstance(o_extra, dict) and isinstance(n_extra, dict):
            self.compare(o_extra, n_extra, f"{where}{{*}}", request, ancestors)
        for key in ("anyOf", "oneOf", "allOf"):
            self._alternatives(key, o.get(key), n.get(key), where, request, ancestors)

    def _alternatives(self, key: str, a: Any, b: Any, where: str, request: bool,
                      ancestors: frozenset[tuple[str, str]]) -> None:
        """Union members: by referenced name when all are ``$ref``s (a request may gain members,
        never lose them; ``allOf`` may not change), else by position."""
        if not isinstance(a, list) or not isinstance(b, list):
            if a != b and (isinstance(a, list) or isinstance(b, list)):
                self.add(where, f"{key} alternatives changed", True)
            return
        names_a, names_b = _ref_names(a), _ref_names(b)
        if names_a is not None and names_b is not None:
            for name in sorted(names_a.keys() - names_b.keys()):
                self.add(where, f"{key} member {name} removed", request or key == "allOf")
            for name in sorted(names_b.keys() - names_a.keys()):
                self.add(where, f"{key} member {name} added", key == "allOf")
            for name in sorted(names_a.keys() & names_b.keys()):
                self.compare(names_a[name], names_b[name], f"{where}<{name}>", request, ancestors)
        elif len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                self.compare(x, y, f"{where}<{key}[{i}]>", request, ancestors)
        else:
            self.add(where, f"{key} alternatives changed", True)

    def _enum(self, o: dict[str, Any], n: dict[str, Any], where: str, request: bool) -> None:
        old_enum, new_enum = _enum_values(o), _enum_values(n)
        if old_enum is None and new_enum is None:
            return
        if new_enum is None:
            self.add(where, "enum restriction removed", not request)
            return
        new_values = {json.dumps(v, sort_keys=True) for v in new_enum}
        if old_enum is None:
            self.add(where, f"now restricted to enum {sorted(new_values)}", request)
            return
        old_values = {json.dumps(v, sort_keys=True) for v in old_enum}
        if old_values - new_values:
            self.add(where, f"enum value(s) removed: {', '.join(sorted(old_values - new_values))}", request)
        if new_values - old_values:
            self.add(where, f"enum value(s) added: {', '.join(sorted(new_values - old_values))}", False)

    def _bounds(self, o: dict[str, Any], n: dict[str, Any], where: str) -> None:
        rules = ((_TIGHTER_IF_SMALLER, lambda a, b: b < a), (_TIGHTER_IF_LARGER, lambda a, b: b > a))
        for keys, tighter in rules:
            for key in keys:
                new = n.get(key)
                if isinstance(new, bool) or not isinstance(new, int | float):
                    continue
                old = o.get(key)
                if not isinstance(old, int | float) or isinstance(old, bool) or tighter(old, new):
                    self.add(where, f"{key} tightened {old} -> {new}", True)

    def _properties(self, o: dict[str, Any], n: dict[str, Any], where: str, request: bool,
                    ancestors: frozenset[tuple[str, str]]) -> None:
        o_props, n_props = o.get("properties", {}), n.get("properties", {})
        o_req, n_req = set(o.get("required", [])), set(n.get("required", []))
        side = "request" if request else "response"
        for name in sorted(o_props.keys() | n_props.keys()):
            at = f"{where}.{name}"
            if name not in n_props:
                still_accepted = request and n.get("additionalProperties") is not False
                self.add(at, f"{side} property removed", not still_accepted)
            elif name not in o_props:
                required = name in n_req
                self.add(at, f"{'required' if required else 'optional'} {side} property added",
                         request and required)
            else:
                if name in n_req and name not in o_req:
                    self.add(at, f"{side} property became required", request)
                elif name in o_req and name not in n_req:
                    self.add(at, f"{side} property became optional", not request)
                self.compare(o_props[name], n_props[name], at, request, ancestors)


def _operations(doc: _Doc) -> dict[tuple[str, str], tuple[dict[str, Any], list[Any]]]:
    ops: dict[tuple[str, str], tuple[dict[str, Any], list[Any]]] = {}
    for path, item in (doc.document.get("paths") or {}).items():
        item, _ = doc.resolve(item)
        for method in HTTP_METHODS:
            if method in item:
                ops[(path, method)] = (item[method], list(item.get("parameters", [])))
    return ops


def _parameters(doc: _Doc, shared: list[Any], op: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    params: dict[tuple[str, str], dict[str, Any]] = {}
    for raw in [*shared, *op.get("parameters", [])]:
        param, _ = doc.resolve(raw)
        params[(param["in"], param["name"])] = param
    return params


def _content(doc: _Doc, node: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    resolved, _ = doc.resolve(node) if node is not None else ({}, "")
    return resolved, resolved.get("content") or {}


# req: CTR-1013, CTR-1014, CTR-1803
def compare_openapi(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    diff = _SchemaDiff("openapi", _Doc(old), _Doc(new))
    old_ops, new_ops = _operations(diff.old), _operations(diff.new)
    old_paths = {p for p, _ in old_ops} | set(old.get("paths") or {})
    new_paths = {p for p, _ in new_ops} | set(new.get("paths") or {})
    for path in sorted(old_paths - new_paths):
        diff.add(path, "path removed", True)
    for path in sorted(new_paths - old_paths):
        diff.add(path, "path added", False)
    for path, method in sorted(old_ops.keys() | new_ops.keys()):
        where = f"{method.upper()} {path}"
        if path not in old_paths or path not in new_paths:
            continue
        if (path, method) not in new_ops:
            diff.add(where, "operation removed", True)
            continue
        if (path, method) not in old_ops:
            diff.add(where, "operation added", False)
            continue
        (o_op, o_shared), (n_op, n_shared) = old_ops[(path, method)], new_ops[(path, method)]
        _compare_parameters(diff, where, _parameters(diff.old, o_shared, o_op),
                            _parameters(diff.new, n_shared, n_op))
        _compare_body(diff, where, o_op.get("requestBody"), n_op.get("requestBody"))
        _compare_responses(diff, where, o_op.get("responses") or {}, n_op.get("responses") or {})
    return diff.changes


def _compare_parameters(diff: _SchemaDiff, where: str, old: dict[tuple[str, str], dict[str, Any]],
                        new: dict[tuple[str, str], dict[str, Any]]) -> None:
    for key in sorted(old.keys() | new.keys()):
        at = f"{where} parameter {key[0]}.{key[1]}"
        if key not in new:
            diff.add(at, "parameter removed", True)
        elif key not in old:
            required = bool(new[key].get("required"))
            diff.add(at, f"{'required' if required else 'optional'} parameter added", required)
        else:
            if new[key].get("required") and not old[key].get("required"):
                diff.add(at, "parameter became required", True)
            elif old[key].get("required") and not new[key].get("required"):
                diff.add(at, "parameter became optional", False)
            if "schema" in old[key] and "schema" in new[key]:
                diff.compare(old[key]["schema"], new[key]["schema"], at, request=True)


def _compare_body(diff: _SchemaDiff, where: str, old: Any, new: Any) -> None:
    at = f"{where} request"
    if old is None and new is None:
        return
    o_body, o_content = _content(diff.old, old)
    n_body, n_content = _content(diff.new, new)
    if new is None:
        diff.add(at, "request body removed", True)
        return
    if old is None or (n_body.get("required") and not o_body.get("required")):
        required = bool(n_body.get("required"))
        diff.add(at, "request body became required" if old is not None else
                 f"{'required' if required else 'optional'} request body added", required)
    for media in sorted(o_content.keys() | n_content.keys()):
        if media not in n_content:
            diff.add(f"{at} {media}", "request media type removed", True)
        elif media not in o_content:
            diff.add(f"{at} {media}", "request media type added", False)
        elif "schema" in o_content[media] and "schema" in n_content[media]:
            diff.compare(o_content[media]["schema"], n_content[media]["schema"], f"{at} body", True)


def _compare_responses(diff: _SchemaDiff, where: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    for status in sorted(old.keys() | new.keys()):
        at = f"{where} response {status}"
        if status not in new:
            diff.add(at, "response status removed", True)
            continue
        if status not in old:
            diff.add(at, "response status added", False)
            continue
        _, o_content = _content(diff.old, old[status])
        _, n_content = _content(diff.new, new[status])
        for media in sorted(o_content.keys() | n_content.keys()):
            if media not in n_content:
                diff.add(f"{at} {media}", "response media type removed", True)
            elif media not in o_content:
                diff.add(f"{at} {media}", "response media type added", False)
            elif "schema" in o_content[media] and "schema" in n_content[media]:
                diff.compare(o_content[media]["schema"], n_content[media]["schema"], f"{at} body", False)


# req: CTR-1804
def compare_config_schema(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """A config file is input: the schema may accept more, never less."""
    diff = _SchemaDiff("config-schema", _Doc(old), _Doc(new))
    diff.compare(old, new, "config", request=True)
    return diff.changes


# ------------------------------------------------------------------------------------- trees

# req: CTR-1011
def compare_trees(baseline: Path, current: Path) -> tuple[list[Change], list[str]]:
    """All changes from ``baseline`` to ``current`` (both laid out like ``contracts/``), plus notes
    on surfaces that one side lacks (not classified: nothing to compare)."""
    changes: list[Change] = []
    notes: list[str] = []
    if any((baseline / PROTO).glob("*.proto")):
        changes += compare_proto(protogen.descriptor_set(baseline / PROTO),
                                 protogen.descriptor_set(current / PROTO))
    else:
        notes.append("proto: baseline has no .proto files")
    for rel, compare in ((OPENAPI, compare_openapi), (CONFIG_SCHEMA, compare_config_schema)):
        old, new = baseline / rel, current / rel
        if old.is_file() and new.is_file():
            changes += compare(json.loads(old.read_text()), json.loads(new.read_text()))
        elif old.is_file():
            changes.append(Change(rel.parts[0], str(rel), "contract file removed", True))
        elif new.is_file():
            notes.append(f"{rel}: not in the baseline yet (cut a baseline to freeze it)")
        else:
            notes.append(f"{rel}: absent on both sides")
    return sorted(changes), notes


# req: CTR-1011
def materialise_ref(repo: Path, ref: str, out: Path) -> Path:
    """Write the contract files of ``ref`` (``git show REF:contracts/...``) into ``out`` as a tree."""
    def git(*args: str) -> bytes:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout
        except FileNotFoundError as exc:
            raise ContractError("git is not installed") from exc
        except subprocess.CalledProcessError as exc:
            raise ContractError(f"git {' '.join(args)}: {exc.stderr.decode().strip()}") from exc

    git("rev-parse", "--verify", f"{ref}^{{commit}}")
    names = git("ls-tree", "-r", "--name-only", ref, "--",
                *(f"contracts/{p}" for p in TREE_PATHS)).decode().splitlines()
    for name in names:
        rel = Path(name).relative_to("contracts")
        if rel.parent == PROTO and rel.suffix != ".proto":
            continue
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(git("show", f"{ref}:{name}"))
    return out


def copy_tree(source: Path, out: Path) -> list[Path]:
    """Copy the contract files of ``source`` into ``out`` (used to cut a baseline)."""
    written = []
    for rel in TREE_PATHS:
        paths = sorted((source / rel).glob("*.proto")) if rel == PROTO else [source / rel]
        for path in paths:
            if path.is_file():
                target = out / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                written.append(target)
    return written
