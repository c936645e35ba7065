/**
 * Node-wide control signals, published on one pub/sub channel that every
 * node subscribes to: a deleted chat's actor drops what is left of it; a
 * closed account's sessions end; an ended login's (logout, refresh-token
 * reuse) sessions end. One Schema encodes them (the event
 * consumers) and decodes them (the actors, the gateway).
 */
import { Schema } from "effect"
import { ChatId, UserId } from "./Domain.ts"

export const ControlChannel = "harmony:control"

export const ChatDeleted = Schema.Struct({ type: Schema.Literal("chat_deleted"), chatId: ChatId })
export const UserDeleted = Schema.Struct({ type: Schema.Literal("user_deleted"), userId: UserId })

/** A login (refresh-token family) ended: its access tokens are refused from now on, its sockets close. */
export const FamilyRevoked = Schema.Struct({ type: Schema.Literal("family_revoked"), familyId: Schema.String })

export const ControlSignal = Schema.Union([ChatDeleted, UserDeleted, FamilyRevoked])
export type ControlSignal = typeof ControlSignal.Type

const ControlSignalJson = Schema.fromJsonString(ControlSignal)

export const encodeControlSignal = Schema.encodeSync(ControlSignalJson)
/** None for a payload that is not a control signal (a newer node's, or garbage): it is ignored. */
export const decodeControlSignal = Schema.decodeUnknownOption(ControlSignalJson)
