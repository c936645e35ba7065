/**
 * The domain types of Harmony, shared by the server, the client SDK and the
 * tests. Their encoded forms are exactly the JSON of docs/protocol.md.
 */
import { Schema } from "effect"

/** Text Postgres can store: no NUL characters. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding NUL is the point
export const isStorableText = Schema.isPattern(/^[^\u0000]*$/, { message: "must not contain NUL characters" })

/** An id: 1 to 128 characters, no control characters. */
const Id = Schema.String.check(
  // biome-ignore lint/suspicious/noControlCharactersInRegex: excluding control characters is the point
  Schema.isPattern(/^[^\u0000-\u001f\u007f]{1,128}$/, { message: "an id is 1 to 128 printable characters" })
)

export const UserId = Id.pipe(Schema.brand("UserId"))
export type UserId = typeof UserId.Type

export const ChatId = Id.pipe(Schema.brand("ChatId"))
export type ChatId = typeof ChatId.Type

export const MessageId = Schema.String.pipe(Schema.brand("MessageId"))
export type MessageId = typeof MessageId.Type

/** A message's position in its chat: contiguous from 1. */
export const Seq = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))
export type Seq = typeof Seq.Type

export const Username = Schema.String.check(
  Schema.isPattern(/^[a-z0-9_.-]{3,32}$/, {
    message: "a username is 3 to 32 of the characters a-z 0-9 _ . -"
  })
)

export const Password = Schema.String.check(
  Schema.isMinLength(8, { message: "a password has at least 8 characters" }),
  Schema.isMaxLength(128, { message: "a password has at most 128 characters" })
)

export const DisplayName = Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(64), isStorableText)

export const ChatName = Schema.String.check(
  Schema.isMinLength(1, { message: "a chat name has 1 to 100 characters" }),
  Schema.isMaxLength(100, { message: "a chat name has 1 to 100 characters" }),
  isStorableText
)

export const MessageBody = Schema.String.check(
  Schema.isMinLength(1, { message: "a message body has 1 to 4000 characters" }),
  Schema.isMaxLength(4000, { message: "a message body has 1 to 4000 characters" })
)

export const ClientMsgId = Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(128))

export const ChatKind = Schema.Literals(["group", "direct"])
export type ChatKind = typeof ChatKind.Type

export const Role = Schema.Literals(["owner", "admin", "member"])
export type Role = typeof Role.Type

/** A group holds at most this many members (docs/protocol.md). */
export const MaxGroupMembers = 1000

export class User extends Schema.Class<User>("harmony/User")({
  id: UserId,
  username: Schema.String,
  displayName: Schema.String
}) {}

export class Session extends Schema.Class<Session>("harmony/Session")({
  user: User,
  accessToken: Schema.String,
  refreshToken: Schema.String,
  expiresIn: Schema.Int
}) {}

export class Member extends Schema.Class<Member>("harmony/Member")({
  userId: UserId,
  role: Role
}) {}

export class Chat extends Schema.Class<Chat>("harmony/Chat")({
  id: ChatId,
  name: Schema.NullOr(Schema.String),
  kind: ChatKind,
  ownerId: Schema.NullOr(UserId),
  createdAt: Schema.String,
  members: Schema.Array(Member)
}) {}

export class ChatSummary extends Schema.Class<ChatSummary>("harmony/ChatSummary")({
  id: ChatId,
  name: Schema.NullOr(Schema.String),
  kind: ChatKind,
  role: Role,
  lastSeq: Seq,
  lastReadSeq: Seq
}) {}

/** How far a member has read a chat (read receipts). */
export class ReadPosition extends Schema.Class<ReadPosition>("harmony/ReadPosition")({
  userId: UserId,
  seq: Seq
}) {}

/** One emoji's reactions on a message, as the caller sees them (history). */
export const ReactionCount = Schema.Struct({
  emoji: Schema.String,
  count: Schema.Int,
  /** Whether the caller is among those who reacted with it. */
  me: Schema.Boolean
})
export type ReactionCount = typeof ReactionCount.Type

/**
 * A message. `body` is absent from a deleted message (a tombstone, with
 * `deletedAt`); an edited one has its current body and `editedAt`.
 * `reactions` appears in history only (absent or empty when none).
 */
export class Message extends Schema.Class<Message>("harmony/Message")({
  chatId: ChatId,
  seq: Seq,
  id: MessageId,
  authorId: UserId,
  body: Schema.optionalKey(Schema.String),
  clientMsgId: Schema.String,
  createdAt: Schema.String,
  editedAt: Schema.optionalKey(Schema.String),
  deletedAt: Schema.optionalKey(Schema.String),
  reactions: Schema.optionalKey(Schema.Array(ReactionCount))
}) {}

/** An emoji reaction: 1 to 32 characters, no whitespace or control characters. */
export const Emoji = Schema.String.check(
  // biome-ignore lint/suspicious/noControlCharactersInRegex: excluding control characters is the point
  Schema.isPattern(/^[^\s\u0000-\u001f\u007f-\u009f]+$/u, {
    message: "an emoji has no whitespace or control characters"
  }),
  Schema.isMinLength(1, { message: "an emoji has 1 to 32 characters" }),
  Schema.isMaxLength(32, { message: "an emoji has 1 to 32 characters" })
)

// Changes to a message (docs/protocol.md "Edits, deletes and reactions"): each
// is a record on the chat's log with a seq of its own, after its target's.
// These are the entries as stored and as their frames carry them.
const changeFields = {
  chatId: ChatId,
  /** The change's own position in the chat's log. */
  seq: Seq,
  /** The change's id (from the caller's Idempotency-Key). */
  id: MessageId,
  /** The seq of the message it changes. */
  targetSeq: Seq,
  /** Who made the change. */
  userId: UserId
}
export const MessageEdited = Schema.Struct({
  type: Schema.Literal("message_edited"),
  ...changeFields,
  body: Schema.String,
  editedAt: Schema.String
})
export type MessageEdited = typeof MessageEdited.Type
export const MessageDeleted = Schema.Struct({
  type: Schema.Literal("message_deleted"),
  ...changeFields,
  deletedAt: Schema.String
})
export type MessageDeleted = typeof MessageDeleted.Type
export const ReactionChanged = Schema.Struct({
  type: Schema.Literal("reaction"),
  ...changeFields,
  emoji: Schema.String,
  /** true: added; false: removed. */
  added: Schema.Boolean
})
export type ReactionChanged = typeof ReactionChanged.Type

export const Change = Schema.Union([MessageEdited, MessageDeleted, ReactionChanged])
export type Change = typeof Change.Type

/** What a chat's log holds at a seq: a message, or a change to one. */
export type LogEntry = Message | Change

export const isChange = (entry: LogEntry): entry is Change => "type" in entry

/**
 * A message with a change applied, as history shows it: an edit replaces
 * the body (a deleted message stays deleted), a delete leaves a tombstone.
 * Reactions are not part of it (history counts them per caller).
 */
export const applyChange = (message: Message, change: Change): Message => {
  if (change.type === "message_edited") {
    if (message.deletedAt !== undefined) return message
    return new Message({ ...message, body: change.body, editedAt: change.editedAt })
  }
  if (change.type === "message_deleted") {
    if (message.deletedAt !== undefined) return message
    const { body: _body, editedAt: _editedAt, ...rest } = message
    return new Message({ ...rest, deletedAt: change.deletedAt })
  }
  return message
}

/** A search hit (GET /v1/search): where the message is, and a snippet with the matched words' ranges. */
export const SearchHit = Schema.Struct({
  chatId: ChatId,
  seq: Seq,
  id: MessageId,
  authorId: UserId,
  createdAt: Schema.String,
  /** Part of the body around the matches (fragments joined by " … "), plain text. */
  snippet: Schema.String,
  /** [start, end) offsets into `snippet` (UTF-16 code units) of the matched words. */
  highlights: Schema.Array(Schema.Tuple([Schema.Int, Schema.Int]))
})
export type SearchHit = typeof SearchHit.Type
