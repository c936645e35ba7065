/**
 * Harmony's client SDK for Node 24+ and browsers. See the README's "Client
 * SDK" section; `createClient` is the entry point.
 */
export { createClient, makeClient } from "./HarmonyClient.ts"
export { ClientErrorCode, HarmonyError, HarmonyErrorCode, isTransient } from "./HarmonyError.ts"
export { newClientMsgId } from "./PendingSends.ts"
export type {
  Accepted,
  ChangeAccepted,
  ChangeOptions,
  ClientEvents,
  ClientOptions,
  CreateChatInput,
  HarmonyClient,
  HarmonyClientEffect,
  HistoryPage,
  HistoryQuery,
  LoginInput,
  RegisterInput,
  SearchPage,
  SearchQuery,
  Status,
  StoredSession,
  SubscribeOptions,
  SubscribeResult
} from "./Types.ts"
export {
  Chat,
  ChatSummary,
  Member,
  Message,
  MessageDeleted,
  MessageEdited,
  ReactionChanged,
  ReactionCount,
  ReadPosition,
  Role,
  SearchHit,
  Session,
  User
} from "../schema/Domain.ts"
export { ErrorCode } from "../schema/Errors.ts"
