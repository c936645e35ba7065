/**
 * State events: written to the Postgres outbox in the transaction of the
 * change, published by the outbox relay to Kafka `chat.events` (key = the
 * aggregate id), decoded with this schema by every consumer.
 */
import { Schema } from "effect"
import { ChatId, ChatKind, Role, UserId } from "./Domain.ts"

export const UserRegistered = Schema.TaggedStruct("user.registered", { userId: UserId, username: Schema.String })
export const UserDeleted = Schema.TaggedStruct("user.deleted", { userId: UserId })
/** `memberIds` starts with the creator (the first owner). */
export const ChatCreated = Schema.TaggedStruct("chat.created", {
  chatId: ChatId,
  kind: ChatKind,
  memberIds: Schema.Array(UserId)
})
export const ChatRenamed = Schema.TaggedStruct("chat.renamed", { chatId: ChatId, name: Schema.String })
/** `memberIds`: the members at deletion, whose cached memberships end with it. */
export const ChatDeleted = Schema.TaggedStruct("chat.deleted", { chatId: ChatId, memberIds: Schema.Array(UserId) })
export const ChatOwnerChanged = Schema.TaggedStruct("chat.owner_changed", { chatId: ChatId, ownerId: UserId })
export const MemberAdded = Schema.TaggedStruct("member.added", { chatId: ChatId, userId: UserId })
export const MemberRemoved = Schema.TaggedStruct("member.removed", { chatId: ChatId, userId: UserId })
/** A member's role changed (made admin or member, or the owner handing over: then also `chat.owner_changed`). */
export const MemberRoleChanged = Schema.TaggedStruct("member.role_changed", {
  chatId: ChatId,
  userId: UserId,
  role: Role
})

export const StateEvent = Schema.Union([
  UserRegistered,
  UserDeleted,
  ChatCreated,
  ChatRenamed,
  ChatDeleted,
  ChatOwnerChanged,
  MemberAdded,
  MemberRemoved,
  MemberRoleChanged
])
export type StateEvent = typeof StateEvent.Type

/** Bumped when an event's payload changes incompatibly. */
export const EventVersion = 1

/** The published form of an event (the Kafka record value). */
export const EventEnvelope = Schema.Struct({
  id: Schema.String,
  type: Schema.String,
  version: Schema.Int,
  timestamp: Schema.String,
  aggregateId: Schema.String,
  payload: StateEvent
})
export type EventEnvelope = typeof EventEnvelope.Type

/** The aggregate an event belongs to: its chat, or its user. */
export const aggregateOf = (event: StateEvent): string => ("chatId" in event ? event.chatId : event.userId)
