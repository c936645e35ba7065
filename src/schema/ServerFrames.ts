/**
 * The server's WebSocket frames (docs/protocol.md "Server → client"): one
 * Schema for both sides of the wire. The server encodes every frame it sends
 * with it (`encodeServerFrame`, or a member's own encoder on the hot path);
 * the SDK in src/client and the tests decode with it (`decodeServerFrame`).
 */
import { Schema } from "effect"
import { Chat, ChatId, Message, MessageDeleted, MessageEdited, ReactionChanged, Seq, UserId } from "./Domain.ts"

const Ref = Schema.optionalKey(Schema.String)

export const ReadyFrame = Schema.Struct({
  type: Schema.Literal("ready"),
  userId: UserId,
  sessionId: Schema.String,
  ref: Ref
})
export const SubscribedFrame = Schema.Struct({
  type: Schema.Literal("subscribed"),
  chatId: ChatId,
  lastSeq: Seq,
  recovered: Schema.Boolean,
  /** Absent from servers that predate epochs, or when the server could not read it. */
  epoch: Schema.optionalKey(Schema.String),
  ref: Ref
})
export const UnsubscribedFrame = Schema.Struct({ type: Schema.Literal("unsubscribed"), chatId: ChatId, ref: Ref })
export const AckFrame = Schema.Struct({
  type: Schema.Literal("ack"),
  clientMsgId: Schema.String,
  id: Schema.String,
  ref: Ref
})
/** `code` is one of the HTTP error codes (docs/protocol.md "Errors"); kept open so a newer server's code still decodes. */
export const ErrorFrame = Schema.Struct({
  type: Schema.Literal("error"),
  code: Schema.String,
  message: Schema.String,
  ref: Ref
})
export const PongFrame = Schema.Struct({ type: Schema.Literal("pong"), ref: Ref })
export const MessageFrame = Schema.Struct({ type: Schema.Literal("message"), message: Message })
/** A message was edited (docs/protocol.md "Edits, deletes and reactions"): a log entry with a seq of its own. */
export const MessageEditedFrame = MessageEdited
/** A message was deleted: a log entry with a seq of its own. */
export const MessageDeletedFrame = MessageDeleted
/** A reaction was added or removed: a log entry with a seq of its own. */
export const ReactionFrame = ReactionChanged
export const TypingSignal = Schema.Struct({ type: Schema.Literal("typing"), chatId: ChatId, userId: UserId })
export const ReadSignal = Schema.Struct({ type: Schema.Literal("read"), chatId: ChatId, userId: UserId, seq: Seq })
export const PresenceFrame = Schema.Struct({
  type: Schema.Literal("presence"),
  chatId: ChatId,
  online: Schema.Array(UserId)
})
export const PresenceChange = Schema.Struct({
  type: Schema.Literals(["join", "leave"]),
  chatId: ChatId,
  userId: UserId
})
export const MembershipChange = Schema.Struct({
  type: Schema.Literals(["member_added", "member_removed"]),
  chatId: ChatId,
  userId: UserId
})
export const ChatDeletedFrame = Schema.Struct({ type: Schema.Literal("chat_deleted"), chatId: ChatId })

// The user's own channel (docs/protocol.md "The user's own channel"): sent to
// every session of the user after `ready`, without subscribing.
/** The user joined a chat (created it, was added, or started a direct chat with them). */
export const ChatAddedFrame = Schema.Struct({
  type: Schema.Literal("chat_added"),
  chat: Chat,
  lastSeq: Seq,
  lastReadSeq: Seq
})
/** The user left the chat or was removed from it. */
export const ChatRemovedFrame = Schema.Struct({ type: Schema.Literal("chat_removed"), chatId: ChatId })
/** The chat was renamed, or its owner or a member's role changed: the chat as it is now. */
export const ChatUpdatedFrame = Schema.Struct({ type: Schema.Literal("chat_updated"), chat: Chat })
/** A message arrived in a chat this session is not subscribed to: the chat's new last seq. */
export const UnreadFrame = Schema.Struct({ type: Schema.Literal("unread"), chatId: ChatId, lastSeq: Seq })
/** The frames of the user's own channel (`chat_deleted` is `ChatDeletedFrame`). */
export const UserChannelFrame = Schema.Union([ChatAddedFrame, ChatRemovedFrame, ChatUpdatedFrame, ChatDeletedFrame])
export type UserChannelFrame = typeof UserChannelFrame.Type

export const ServerFrame = Schema.Union([
  ReadyFrame,
  SubscribedFrame,
  UnsubscribedFrame,
  AckFrame,
  ErrorFrame,
  PongFrame,
  MessageFrame,
  MessageEditedFrame,
  MessageDeletedFrame,
  ReactionFrame,
  TypingSignal,
  ReadSignal,
  PresenceFrame,
  PresenceChange,
  MembershipChange,
  ChatDeletedFrame,
  ChatAddedFrame,
  ChatRemovedFrame,
  ChatUpdatedFrame,
  UnreadFrame
])
export type ServerFrame = typeof ServerFrame.Type

/** Decodes one text frame: JSON, then the frame schema. */
export const decodeServerFrame = Schema.decodeUnknownExit(Schema.fromJsonString(ServerFrame))

const encodeFrame = Schema.encodeSync(ServerFrame)
const encodeMessage = Schema.encodeSync(MessageFrame)

/** Encodes one frame as the text the socket sends (the schema, then JSON: cheaper than `fromJsonString`). */
export const encodeServerFrame = (frame: ServerFrame): string => JSON.stringify(encodeFrame(frame))

/** A message frame's text: published once per message, so it skips finding its member of the union. */
export const encodeMessageFrame = (frame: typeof MessageFrame.Type): string => JSON.stringify(encodeMessage(frame))
