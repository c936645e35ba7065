/**
 * The HTTP contract (docs/protocol.md "HTTP, under /v1") as one HttpApi
 * definition: the server's routes, the OpenAPI document at /openapi.json and
 * the page at /docs all come from it.
 */
import { Context, Schema } from "effect"
import {
  HttpApi,
  HttpApiEndpoint,
  HttpApiGroup,
  HttpApiMiddleware,
  HttpApiSchema,
  HttpApiSecurity,
  OpenApi
} from "effect/http-api"
import {
  Chat,
  ChatId,
  ChatKind,
  ChatName,
  ChatSummary,
  ClientMsgId,
  DisplayName,
  Emoji,
  isStorableText,
  Message,
  MessageBody,
  MessageId,
  Password,
  ReadPosition,
  Role,
  SearchHit,
  Seq,
  Session,
  User,
  UserId,
  Username
} from "../schema/Domain.ts"
import {
  BadRequestWire,
  ConflictWire,
  ForbiddenWire,
  NotFoundWire,
  RateLimitedWire,
  UnauthorizedWire,
  UnavailableWire
} from "../schema/Errors.ts"

/** The authenticated caller, provided by the Authentication middleware. */
export class CurrentUser extends Context.Service<CurrentUser, User>()("harmony/http/CurrentUser") {}

export class Authentication extends HttpApiMiddleware.Service<Authentication, { provides: CurrentUser }>()(
  "harmony/http/Authentication",
  {
    security: { bearer: HttpApiSecurity.bearer },
    error: [UnauthorizedWire, UnavailableWire]
  }
) {}

export const RegisterRequest = Schema.Struct({
  username: Username,
  password: Password,
  displayName: Schema.optionalKey(DisplayName)
})
export const LoginRequest = Schema.Struct({ username: Schema.String.check(isStorableText), password: Schema.String })
export const RefreshRequest = Schema.Struct({ refreshToken: Schema.String })
export const CreateChatRequest = Schema.Struct({
  name: Schema.optionalKey(ChatName),
  kind: ChatKind,
  memberIds: Schema.Array(UserId)
})
export const RenameChatRequest = Schema.Struct({ name: ChatName })
export const AddMembersRequest = Schema.Struct({ userIds: Schema.Array(UserId).check(Schema.isMinLength(1)) })
/** `owner` hands the chat over: the caller becomes an admin (docs/protocol.md "Roles"). */
export const SetRoleRequest = Schema.Struct({ role: Role })

export class AuthApi extends HttpApiGroup.make("auth")
  .add(
    HttpApiEndpoint.post("register", "/register", {
      payload: RegisterRequest,
      success: Session.pipe(HttpApiSchema.status(201)),
      error: [BadRequestWire, ConflictWire, RateLimitedWire, UnavailableWire]
    }),
    HttpApiEndpoint.post("login", "/login", {
      payload: LoginRequest,
      success: Session,
      error: [BadRequestWire, UnauthorizedWire, RateLimitedWire, UnavailableWire]
    }),
    HttpApiEndpoint.post("refresh", "/refresh", {
      payload: RefreshRequest,
      success: Session,
      error: [BadRequestWire, UnauthorizedWire, RateLimitedWire, UnavailableWire]
    }),
    HttpApiEndpoint.post("logout", "/logout", {
      payload: RefreshRequest,
      success: HttpApiSchema.NoContent,
      error: [BadRequestWire, UnauthorizedWire, RateLimitedWire, UnavailableWire]
    })
  )
  .prefix("/v1/auth")
  .annotateMerge(OpenApi.annotations({ title: "Accounts", description: "Registration, login and token refresh" })) {}

export class MeApi extends HttpApiGroup.make("me")
  .add(
    HttpApiEndpoint.get("get", "/v1/me", { success: User }),
    HttpApiEndpoint.delete("close", "/v1/me", { success: HttpApiSchema.NoContent, error: [RateLimitedWire] }),
    HttpApiEndpoint.get("chats", "/v1/me/chats", {
      success: Schema.Struct({ chats: Schema.Array(ChatSummary) })
    }),
    HttpApiEndpoint.get("searchUsers", "/v1/users", {
      query: { q: Schema.String.check(Schema.isMinLength(1), isStorableText) },
      success: Schema.Struct({ users: Schema.Array(User) })
    }),
    // Beyond docs/protocol.md: chat members and messages carry user ids only, so
    // clients need a way to show a name for one (docs/protocol.md).
    HttpApiEndpoint.get("getUser", "/v1/users/:userId", {
      params: { userId: UserId },
      success: User,
      error: [NotFoundWire]
    })
  )
  .middleware(Authentication)
  .annotateMerge(OpenApi.annotations({ title: "Me", description: "The caller's account and chats" })) {}

const chatParams = { chatId: ChatId }
const chatErrors = [BadRequestWire, ForbiddenWire, NotFoundWire, ConflictWire, RateLimitedWire, UnavailableWire]

export class ChatsApi extends HttpApiGroup.make("chats")
  .add(
    HttpApiEndpoint.post("create", "/", {
      payload: CreateChatRequest,
      success: Chat.pipe(HttpApiSchema.status(201)),
      error: [BadRequestWire, RateLimitedWire, UnavailableWire]
    }),
    HttpApiEndpoint.get("get", "/:chatId", { params: chatParams, success: Chat, error: [NotFoundWire] }),
    HttpApiEndpoint.patch("rename", "/:chatId", {
      params: chatParams,
      payload: RenameChatRequest,
      success: Chat,
      error: chatErrors
    }),
    HttpApiEndpoint.delete("delete", "/:chatId", {
      params: chatParams,
      success: HttpApiSchema.NoContent,
      error: chatErrors
    }),
    HttpApiEndpoint.post("addMembers", "/:chatId/members", {
      params: chatParams,
      payload: AddMembersRequest,
      success: Chat,
      error: chatErrors
    }),
    HttpApiEndpoint.delete("removeMember", "/:chatId/members/:userId", {
      params: { chatId: ChatId, userId: UserId },
      success: HttpApiSchema.NoContent,
      error: chatErrors
    }),
    HttpApiEndpoint.patch("setRole", "/:chatId/members/:userId", {
      params: { chatId: ChatId, userId: UserId },
      payload: SetRoleRequest,
      success: Chat,
      error: chatErrors
    }).annotateMerge(
      OpenApi.annotations({
        summary: "Change a member's role (owner only)",
        description:
          "`admin` or `member` sets the member's role; `owner` hands the chat over to the member, and the caller becomes an admin."
      })
    )
  )
  .middleware(Authentication)
  .prefix("/v1/chats")
  .annotateMerge(OpenApi.annotations({ title: "Chats", description: "Chats and their members" })) {}

export const HistoryQuery = {
  before: Schema.optionalKey(Schema.Int.check(Schema.isGreaterThanOrEqualTo(1))),
  after: Schema.optionalKey(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))),
  limit: Schema.optionalKey(
    Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 100 }, { message: "limit is 1 to 100" }))
  )
}
export const HistoryPage = Schema.Struct({
  messages: Schema.Array(Message),
  nextBefore: Schema.optionalKey(Schema.NullOr(Seq)),
  nextAfter: Schema.optionalKey(Schema.NullOr(Seq))
})
export const PostMessageRequest = Schema.Struct({ clientMsgId: ClientMsgId, body: MessageBody })
export const PostMessageAccepted = Schema.Struct({ id: MessageId, clientMsgId: Schema.String })
export const ReadRequest = Schema.Struct({ seq: Seq })
export const EditMessageRequest = Schema.Struct({ body: MessageBody })
/** A change's id: 202 once the chat's log holds it, like a send's ack. */
export const ChangeAccepted = Schema.Struct({ id: MessageId })
/** Makes a change idempotent: a retry with the same key is stored once (docs/protocol.md). */
export const ChangeHeaders = {
  "idempotency-key": Schema.optionalKey(
    Schema.String.check(
      Schema.isMinLength(1, { message: "an Idempotency-Key has 1 to 128 characters" }),
      Schema.isMaxLength(128, { message: "an Idempotency-Key has 1 to 128 characters" })
    )
  )
}
const messageParams = { chatId: ChatId, seq: Seq }
const reactionParams = { ...messageParams, emoji: Emoji }
const changeErrors = [BadRequestWire, ForbiddenWire, NotFoundWire, RateLimitedWire, UnavailableWire]

export class MessagesApi extends HttpApiGroup.make("messages")
  .add(
    HttpApiEndpoint.get("history", "/:chatId/messages", {
      params: chatParams,
      query: HistoryQuery,
      success: HistoryPage,
      error: [BadRequestWire, NotFoundWire, UnavailableWire]
    }),
    HttpApiEndpoint.post("send", "/:chatId/messages", {
      params: chatParams,
      payload: PostMessageRequest,
      success: PostMessageAccepted.pipe(HttpApiSchema.status(202)),
      error: [BadRequestWire, NotFoundWire, RateLimitedWire, UnavailableWire]
    }),
    HttpApiEndpoint.post("read", "/:chatId/read", {
      params: chatParams,
      payload: ReadRequest,
      success: HttpApiSchema.NoContent,
      error: [BadRequestWire, NotFoundWire, RateLimitedWire, UnavailableWire]
    }),
    // Beyond docs/protocol.md: read receipts that survive a reload (docs/protocol.md).
    HttpApiEndpoint.get("readPositions", "/:chatId/read", {
      params: chatParams,
      success: Schema.Struct({ reads: Schema.Array(ReadPosition) }),
      error: [NotFoundWire, UnavailableWire]
    }),
    HttpApiEndpoint.patch("edit", "/:chatId/messages/:seq", {
      params: messageParams,
      headers: ChangeHeaders,
      payload: EditMessageRequest,
      success: ChangeAccepted.pipe(HttpApiSchema.status(202)),
      error: changeErrors
    }).annotateMerge(
      OpenApi.annotations({
        summary: "Edit a message (its author only)",
        description: "Goes on the chat's log with a seq of its own; subscribers get `message_edited`."
      })
    ),
    HttpApiEndpoint.delete("deleteMessage", "/:chatId/messages/:seq", {
      params: messageParams,
      headers: ChangeHeaders,
      success: ChangeAccepted.pipe(HttpApiSchema.status(202)),
      error: changeErrors
    }).annotateMerge(
      OpenApi.annotations({
        summary: "Delete a message (its author, the owner or an admin)",
        description:
          "Goes on the chat's log with a seq of its own; subscribers get `message_deleted`, history a tombstone."
      })
    ),
    HttpApiEndpoint.put("react", "/:chatId/messages/:seq/reactions/:emoji", {
      params: reactionParams,
      headers: ChangeHeaders,
      success: ChangeAccepted.pipe(HttpApiSchema.status(202)),
      error: changeErrors
    }).annotateMerge(
      OpenApi.annotations({
        summary: "Add the caller's reaction (emoji URL-encoded)",
        description: "Goes on the chat's log with a seq of its own; subscribers get `reaction` with `added: true`."
      })
    ),
    HttpApiEndpoint.delete("unreact", "/:chatId/messages/:seq/reactions/:emoji", {
      params: reactionParams,
      headers: ChangeHeaders,
      success: ChangeAccepted.pipe(HttpApiSchema.status(202)),
      error: changeErrors
    }).annotateMerge(
      OpenApi.annotations({
        summary: "Remove the caller's reaction (emoji URL-encoded)",
        description: "Goes on the chat's log with a seq of its own; subscribers get `reaction` with `added: false`."
      })
    )
  )
  .middleware(Authentication)
  .prefix("/v1/chats")
  .annotateMerge(
    OpenApi.annotations({
      title: "Messages",
      description: "History, sending, read positions; edits, deletes and reactions"
    })
  ) {}

/** The longest search query, in characters (docs/protocol.md "Search"). */
export const MaxSearchQuery = 200
/** The most words in a search query (runs of letters and digits, as Postgres' parser splits them). */
export const MaxSearchWords = 32
/** The most hits on one search page. */
export const MaxSearchPage = 50

const words = (text: string) => text.match(/[\p{L}\p{N}]+/gu)?.length ?? 0

export const SearchQuery = {
  q: Schema.String.check(
    Schema.isMinLength(1, { message: `q has 1 to ${MaxSearchQuery} characters` }),
    Schema.isMaxLength(MaxSearchQuery, { message: `q has 1 to ${MaxSearchQuery} characters` }),
    Schema.makeFilter((q: string) => words(q) <= MaxSearchWords || `q has at most ${MaxSearchWords} words`),
    isStorableText
  ),
  chatId: Schema.optionalKey(ChatId),
  before: Schema.optionalKey(Schema.String.check(Schema.isMaxLength(400))),
  limit: Schema.optionalKey(
    Schema.Int.check(
      Schema.isBetween({ minimum: 1, maximum: MaxSearchPage }, { message: `limit is 1 to ${MaxSearchPage}` })
    )
  )
}
export const SearchPage = Schema.Struct({
  hits: Schema.Array(SearchHit),
  /** Pass as `before` for the next page; null on the last page. */
  nextBefore: Schema.NullOr(Schema.String)
})

export class SearchApi extends HttpApiGroup.make("search")
  .add(
    HttpApiEndpoint.get("search", "/v1/search", {
      query: SearchQuery,
      success: SearchPage,
      error: [BadRequestWire, NotFoundWire, RateLimitedWire, UnavailableWire]
    })
  )
  .middleware(Authentication)
  .annotateMerge(
    OpenApi.annotations({
      title: "Search",
      description:
        "Full-text search over the messages of the chats the caller is a member of at the moment of the query"
    })
  ) {}

export class SystemApi extends HttpApiGroup.make("system")
  .add(
    HttpApiEndpoint.get("healthz", "/healthz", { success: Schema.Struct({ status: Schema.Literal("ok") }) }),
    HttpApiEndpoint.get("readyz", "/readyz", {
      success: Schema.Struct({ status: Schema.Literal("ready"), checks: Schema.Record(Schema.String, Schema.String) }),
      error: UnavailableWire
    })
  )
  .annotateMerge(OpenApi.annotations({ title: "System", description: "Liveness and readiness" })) {}

export class Api extends HttpApi.make("harmony")
  .add(AuthApi)
  .add(MeApi)
  .add(ChatsApi)
  .add(MessagesApi)
  .add(SearchApi)
  .add(SystemApi)
  .annotateMerge(
    OpenApi.annotations({
      title: "Harmony",
      version: "1",
      description: "Real-time chat engine: the HTTP half of the client contract (docs/protocol.md)."
    })
  ) {}
