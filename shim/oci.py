"""OCI runtime-spec JSON to Kata's protobuf Spec/Process (grpc.Spec, grpc.Process).

Kata's oci.proto names fields after the Go structs (`UID`, `OOMScoreAdj`,
`Terminal`), the JSON spec in lower camel case (`uid`, `oomScoreAdj`,
`terminal`): matching names without regard to case maps one onto the other.
Keys Kata's proto lacks are dropped here, after shim.spec_support has refused
any spec whose known fields Kata's proto lacks are set (`scheduler`,
`personality`...).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from protos.kata import oci_pb2
from shim.spec_support import SpecError, check_process, check_resources, check_spec

_SCALAR_INT = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
}
_FIELD_INDEX: dict[str, dict[str, FieldDescriptor]] = {}
# JSON keys whose Kata field is not the same word
_ALIASES = {"ociversion": "version"}


def _fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    index = _FIELD_INDEX.get(descriptor.full_name)
    if index is None:
        index = {f.name.lower(): f for f in descriptor.fields}
        for alias, name in _ALIASES.items():
            if name in index:
                index[alias] = index[name]
        _FIELD_INDEX[descriptor.full_name] = index
    return index


def _scalar(field: FieldDescriptor, value: Any, where: str) -> Any:
    if field.type in _SCALAR_INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where} must be an integer, not {value!r}")
        if value < 0 and field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64):
            value &= (1 << (32 if field.type == FieldDescriptor.TYPE_UINT32 else 64)) - 1
        return value
    if field.type == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise SpecError(f"{where} must be true or false, not {value!r}")
        return value
    if field.type == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            raise SpecError(f"{where} must be a string, not {value!r}")
        return value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.encode() if isinstance(value, str) else bytes(value)
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return float(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return value
    raise SpecError(f"{where}: unsupported field type {field.type}")


def fill_message(message: Message, data: dict[str, Any], where: str = "spec") -> Message:
    """Copy a JSON object into a protobuf message, matching keys without case."""
    if not isinstance(data, dict):
        raise SpecError(f"{where} must be an object, not {type(data).__name__}")
    index = _fields(message.DESCRIPTOR)
    for key, value in data.items():
        field = index.get(key.lower())
        if field is None or value is None:
            continue
        path = f"{where}.{key}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            target = getattr(message, field.name)
            for map_key, map_value in value.items():
                if value_field.message_type is not None:
                    fill_message(target[map_key], map_value, f"{path}.{map_key}")
                else:
                    target[map_key] = _scalar(value_field, map_value, f"{path}.{map_key}")
        elif field.is_repeated:
            if not isinstance(value, list):
                raise SpecError(f"{path} must be a list")
            target = getattr(message, field.name)
            for i, item in enumerate(value):
                if field.message_type is not None:
                    fill_message(target.add(), item, f"{path}[{i}]")
                else:
                    target.append(_scalar(field, item, f"{path}[{i}]"))
        elif field.message_type is not None:
            fill_message(getattr(message, field.name), value, path)
        else:
            setattr(message, field.name, _scalar(field, value, path))
    return message


def spec_to_kata(spec: dict[str, Any]) -> oci_pb2.Spec:
    """An OCI config.json (parsed) as Kata's grpc.Spec; refuses what it cannot carry."""
    check_spec(spec)
    return fill_message(oci_pb2.Spec(), spec)


def process_to_kata(process: dict[str, Any]) -> oci_pb2.Process:
    """An OCI process object (Exec's spec) as Kata's grpc.Process."""
    check_process(process)
    return fill_message(oci_pb2.Process(), process, "process")


def resources_to_kata(resources: dict[str, Any]) -> oci_pb2.LinuxResources:
    """OCI linux.resources (Update's resources) as Kata's grpc.LinuxResources."""
    check_resources(resources)
    return fill_message(oci_pb2.LinuxResources(), resources, "resources")
