/**
 * What travels on Kafka `chat.messages` (key = chat id): an accepted send,
 * before it has a seq. The id is derived from (chatId, authorId,
 * clientMsgId), so a retried send carries the same id and the actor can
 * recognise it.
 */
import { Schema } from "effect"
import { createHash } from "node:crypto"
import { ChatId, MessageId, UserId } from "./Domain.ts"

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
/** Synchronous, for the partition runner's loop. */
export const decodeSendRecordOption = Schema.decodeUnknownOption(SendRecordJson)
export const encodeSendRecord = Schema.encodeSync(SendRecordJson)

/** The message id of a send: the same for every retry of it. */
export const messageIdOf = (chatId: string, authorId: string, clientMsgId: string): MessageId =>
  createHash("sha256")
    .update(`${chatId}\u0000${authorId}\u0000${clientMsgId}`)
    .digest("base64url")
    .slice(0, 22) as MessageId
