/**
 * What travels on Kafka `chat.messages` (key = chat id): an accepted send or
 * change (edit, delete, reaction), before it has a seq. The id is derived
 * from (chatId, authorId, clientMsgId) — for a change, from its
 * Idempotency-Key — so a retry carries the same id and the actor can
 * recognise it.
 */
import { Schema } from "effect"
import { createHash } from "node:crypto"
import { ChatId, MessageDeleted, MessageEdited, MessageId, ReactionChanged, UserId } from "./Domain.ts"

export const SendRecord = Schema.Struct({
  id: MessageId,
  chatId: ChatId,
  authorId: UserId,
  clientMsgId: Schema.String,
  body: Schema.String,
  /** When the gateway accepted it (ISO-8601), which becomes the message's createdAt. */
  sentAt: Schema.String
})
export type SendRecord = typeof SendRecord.Type

export const SendRecordJson = Schema.fromJsonString(SendRecord)
export const decodeSendRecord = Schema.decodeUnknownEffect(SendRecordJson)
export const encodeSendRecord = Schema.encodeSync(SendRecordJson)

/** An accepted change: the entry it becomes, without the seq its chat's actor gives it. */
export const ChangeRecord = Schema.Union([
  MessageEdited.mapFields(({ seq: _, ...fields }) => fields),
  MessageDeleted.mapFields(({ seq: _, ...fields }) => fields),
  ReactionChanged.mapFields(({ seq: _, ...fields }) => fields)
])
export type ChangeRecord = typeof ChangeRecord.Type
export const encodeChangeRecord = Schema.encodeSync(Schema.fromJsonString(ChangeRecord))

/** Any record of `chat.messages`. */
export type ChatRecord = SendRecord | ChangeRecord
export const ChatRecordJson = Schema.fromJsonString(Schema.Union([SendRecord, ChangeRecord]))
/** Synchronous, for the partition runner's loop. */
export const decodeChatRecordOption = Schema.decodeUnknownOption(ChatRecordJson)

export const isChangeRecord = (record: ChatRecord): record is ChangeRecord => "type" in record

/** The message id of a send: the same for every retry of it. */
export const messageIdOf = (chatId: string, authorId: string, clientMsgId: string): MessageId =>
  createHash("sha256")
    .update(`${chatId}\u0000${authorId}\u0000${clientMsgId}`)
    .digest("base64url")
    .slice(0, 22) as MessageId

/**
 * A change's id: the same for every retry with the same Idempotency-Key. Its
 * input starts with a control character, which no chat id has, so it never
 * equals a send's.
 */
export const changeIdOf = (chatId: string, userId: string, key: string): MessageId =>
  createHash("sha256")
    .update(`\u0001change\u0000${chatId}\u0000${userId}\u0000${key}`)
    .digest("base64url")
    .slice(0, 22) as MessageId
