from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ST_UnKnow: _ClassVar[SessionType]
    ST_Single: _ClassVar[SessionType]
    ST_Group: _ClassVar[SessionType]

class MessageType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MT_UnKnow: _ClassVar[MessageType]
    MT_Text: _ClassVar[MessageType]
    MT_Picture: _ClassVar[MessageType]
    MT_Voice: _ClassVar[MessageType]
    MT_System: _ClassVar[MessageType]

class ACKType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AT_UnKnow: _ClassVar[ACKType]
    AT_Up: _ClassVar[ACKType]
    AT_Push: _ClassVar[ACKType]
    AT_Login: _ClassVar[ACKType]

class CmdType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CT_UnKnow: _ClassVar[CmdType]
    CT_Login: _ClassVar[CmdType]
    CT_Heartbeat: _ClassVar[CmdType]
    CT_Message: _ClassVar[CmdType]
    CT_ACK: _ClassVar[CmdType]
    CT_Sync: _ClassVar[CmdType]
    CT_Read: _ClassVar[CmdType]
    CT_Typing: _ClassVar[CmdType]
ST_UnKnow: SessionType
ST_Single: SessionType
ST_Group: SessionType
MT_UnKnow: MessageType
MT_Text: MessageType
MT_Picture: MessageType
MT_Voice: MessageType
MT_System: MessageType
AT_UnKnow: ACKType
AT_Up: ACKType
AT_Push: ACKType
AT_Login: ACKType
CT_UnKnow: CmdType
CT_Login: CmdType
CT_Heartbeat: CmdType
CT_Message: CmdType
CT_ACK: CmdType
CT_Sync: CmdType
CT_Read: CmdType
CT_Typing: CmdType

class Input(_message.Message):
    __slots__ = ("type", "data")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    type: CmdType
    data: bytes
    def __init__(self, type: _Optional[_Union[CmdType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Output(_message.Message):
    __slots__ = ("type", "code", "CodeMsg", "data")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    CODEMSG_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    type: CmdType
    code: int
    CodeMsg: str
    data: bytes
    def __init__(self, type: _Optional[_Union[CmdType, str]] = ..., code: _Optional[int] = ..., CodeMsg: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class OutputBatch(_message.Message):
    __slots__ = ("outputs",)
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, outputs: _Optional[_Iterable[bytes]] = ...) -> None: ...

class LoginMsg(_message.Message):
    __slots__ = ("token", "device_id", "push_ack", "notices")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    PUSH_ACK_FIELD_NUMBER: _ClassVar[int]
    NOTICES_FIELD_NUMBER: _ClassVar[int]
    token: bytes
    device_id: str
    push_ack: bool
    notices: bool
    def __init__(self, token: _Optional[bytes] = ..., device_id: _Optional[str] = ..., push_ack: _Optional[bool] = ..., notices: _Optional[bool] = ...) -> None: ...

class HeartbeatMsg(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpMsg(_message.Message):
    __slots__ = ("msg", "clientId")
    MSG_FIELD_NUMBER: _ClassVar[int]
    CLIENTID_FIELD_NUMBER: _ClassVar[int]
    msg: Message
    clientId: int
    def __init__(self, msg: _Optional[_Union[Message, _Mapping]] = ..., clientId: _Optional[int] = ...) -> None: ...

class PushMsg(_message.Message):
    __slots__ = ("msg",)
    MSG_FIELD_NUMBER: _ClassVar[int]
    msg: Message
    def __init__(self, msg: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class SyncInputMsg(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class SyncOutputMsg(_message.Message):
    __slots__ = ("messages", "has_more")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    has_more: bool
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("session_type", "receiver_id", "sender_id", "message_type", "content", "seq", "send_time")
    SESSION_TYPE_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SEND_TIME_FIELD_NUMBER: _ClassVar[int]
    session_type: SessionType
    receiver_id: int
    sender_id: int
    message_type: MessageType
    content: bytes
    seq: int
    send_time: int
    def __init__(self, session_type: _Optional[_Union[SessionType, str]] = ..., receiver_id: _Optional[int] = ..., sender_id: _Optional[int] = ..., message_type: _Optional[_Union[MessageType, str]] = ..., content: _Optional[bytes] = ..., seq: _Optional[int] = ..., send_time: _Optional[int] = ...) -> None: ...

class ACKMsg(_message.Message):
    __slots__ = ("type", "clientId", "seq")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CLIENTID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    type: ACKType
    clientId: int
    seq: int
    def __init__(self, type: _Optional[_Union[ACKType, str]] = ..., clientId: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class ReadMsg(_message.Message):
    __slots__ = ("session_type", "peer_id", "seq", "reader_id")
    SESSION_TYPE_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    READER_ID_FIELD_NUMBER: _ClassVar[int]
    session_type: SessionType
    peer_id: int
    seq: int
    reader_id: int
    def __init__(self, session_type: _Optional[_Union[SessionType, str]] = ..., peer_id: _Optional[int] = ..., seq: _Optional[int] = ..., reader_id: _Optional[int] = ...) -> None: ...

class TypingMsg(_message.Message):
    __slots__ = ("session_type", "peer_id", "sender_id")
    SESSION_TYPE_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    session_type: SessionType
    peer_id: int
    sender_id: int
    def __init__(self, session_type: _Optional[_Union[SessionType, str]] = ..., peer_id: _Optional[int] = ..., sender_id: _Optional[int] = ...) -> None: ...
