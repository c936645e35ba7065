/**
 * Harmony's client SDK for Node 24+ and browsers. See the README's "Client
 * SDK" section; `createClient` is the entry point.
 */
export {
  type Accepted,
  type ClientEvents,
  type ClientOptions,
  type CreateChatInput,
  createClient,
  type HarmonyClient,
  type HarmonyClientEffect,
  type HistoryPage,
  type HistoryQuery,
  type LoginInput,
  makeClient,
  newClientMsgId,
  type RegisterInput,
  type Status,
  type StoredSession,
  type SubscribeResult
} from "./HarmonyClient.ts"
export { ClientErrorCode, HarmonyError, HarmonyErrorCode, isTransient } from "./HarmonyError.ts"
export { Chat, ChatSummary, Member, Message, ReadPosition, Role, Session, User } from "../schema/Domain.ts"
export { ErrorCode } from "../schema/Errors.ts"
