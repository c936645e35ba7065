/**
 * The HttpApi handlers: thin translations from the HTTP contract to the
 * state services (src/state), whose typed errors are the contract's errors.
 */
import { Effect, Layer, Option, Redacted } from "effect"
import type { HttpServerRequest } from "effect/http"
import { HttpApiBuilder } from "effect/http-api"
import { Unavailable } from "../schema/Errors.ts"
import { Accounts } from "../state/Accounts.ts"
import { Chats } from "../state/Chats.ts"
import { Membership } from "../state/Membership.ts"
import { RateLimits } from "../state/RateLimits.ts"
import { Api, Authentication, CurrentUser } from "./Api.ts"
import { Readiness } from "./Readiness.ts"
import { Fanout } from "../messages/Fanout.ts"
import { History } from "../messages/History.ts"
import { Changes } from "../messages/Changes.ts"
import { Ingest } from "../messages/Ingest.ts"
import { markRead, memberRole } from "../messages/ChatRules.ts"
import { SearchIndex } from "../state/SearchIndex.ts"

/** The client's address for per-address limits (the socket peer; no proxy headers are trusted). */
const addressOf = (request: HttpServerRequest.HttpServerRequest) =>
  Option.getOrElse(request.remoteAddress, () => "unknown")

/** At most this many users answer a search (docs/protocol.md). */
const SearchLimit = 20

export const AuthenticationLive = Layer.effect(
  Authentication,
  Effect.gen(function* () {
    const accounts = yield* Accounts
    return Authentication.of({
      bearer: (httpEffect, { credential }) =>
        Effect.flatMap(accounts.authenticate(Redacted.value(credential)), (user) =>
          Effect.provideService(httpEffect, CurrentUser, user)
        )
    })
  })
)

const AuthHandlers = HttpApiBuilder.group(
  Api,
  "auth",
  Effect.fn(function* (handlers) {
    const accounts = yield* Accounts
    const limits = yield* RateLimits
    return handlers.handleAll({
      register: ({ payload, request }) =>
        limits.take("register", addressOf(request)).pipe(Effect.andThen(accounts.register(payload))),
      // Every attempt counts against the address; only failures count
      // against the username from that address (a success gives its token
      // back), so a guesser elsewhere cannot lock the owner out.
      login: ({ payload, request }) => {
        const address = addressOf(request)
        const failures = `${address}|${payload.username}`
        return limits.take("loginAddress", address).pipe(
          Effect.andThen(limits.take("loginUser", failures)),
          Effect.andThen(accounts.login(payload.username, payload.password)),
          Effect.tap(() => limits.giveBack("loginUser", failures))
        )
      },
      refresh: ({ payload, request }) =>
        limits.take("refresh", addressOf(request)).pipe(Effect.andThen(accounts.refresh(payload.refreshToken))),
      logout: ({ payload, request }) =>
        limits.take("refresh", addressOf(request)).pipe(Effect.andThen(accounts.logout(payload.refreshToken)))
    })
  })
)

const MeHandlers = HttpApiBuilder.group(
  Api,
  "me",
  Effect.fn(function* (handlers) {
    const accounts = yield* Accounts
    const chats = yield* Chats
    const limits = yield* RateLimits
    const refresh = (yield* Membership).changed
    return handlers.handleAll({
      get: () => CurrentUser,
      close: () =>
        Effect.gen(function* () {
          const user = yield* CurrentUser
          yield* limits.take("write", user.id)
          const left = yield* accounts.close(user.id)
          yield* Effect.forEach(left, ({ chatId, changed }) => refresh(chatId, changed), { discard: true })
        }),
      chats: () =>
        Effect.flatMap(CurrentUser, (user) => Effect.map(chats.listForUser(user.id), (list) => ({ chats: list }))),
      searchUsers: ({ query }) => Effect.map(accounts.search(query.q, SearchLimit), (users) => ({ users })),
      getUser: ({ params }) => accounts.get(params.userId)
    })
  })
)

const ChatsHandlers = HttpApiBuilder.group(
  Api,
  "chats",
  Effect.fn(function* (handlers) {
    const chats = yield* Chats
    const limits = yield* RateLimits
    const refresh = (yield* Membership).changed
    /** The caller, once `limit` lets another of their calls through. */
    const limitedUser = (limit: "createChat" | "write") =>
      Effect.tap(CurrentUser, (user) => limits.take(limit, user.id))
    return handlers.handleAll({
      create: ({ payload }) => Effect.flatMap(limitedUser("createChat"), (user) => chats.create(user.id, payload)),
      get: ({ params }) => Effect.flatMap(CurrentUser, (user) => chats.get(user.id, params.chatId)),
      rename: ({ params, payload }) =>
        Effect.flatMap(limitedUser("write"), (user) => chats.rename(user.id, params.chatId, payload.name)),
      delete: ({ params }) =>
        Effect.flatMap(limitedUser("write"), (user) => chats.delete(user.id, params.chatId)).pipe(
          Effect.flatMap((memberIds) => refresh(params.chatId, memberIds))
        ),
      addMembers: ({ params, payload }) =>
        Effect.flatMap(limitedUser("write"), (user) => chats.addMembers(user.id, params.chatId, payload.userIds)).pipe(
          Effect.tap(() => refresh(params.chatId, payload.userIds))
        ),
      removeMember: ({ params }) =>
        Effect.flatMap(limitedUser("write"), (user) => chats.removeMember(user.id, params.chatId, params.userId)).pipe(
          // The one removed, and the new owner when the owner left: their roles hold from the answer on.
          Effect.flatMap((changed) => refresh(params.chatId, changed))
        ),
      setRole: ({ params, payload }) =>
        Effect.flatMap(limitedUser("write"), (user) =>
          chats
            .setRole(user.id, params.chatId, params.userId, payload.role)
            .pipe(Effect.tap(() => refresh(params.chatId, [user.id, params.userId])))
        )
    })
  })
)

/** The default history page size (docs/protocol.md). */
const DefaultPageSize = 50

const MessagesHandlers = HttpApiBuilder.group(
  Api,
  "messages",
  Effect.fn(function* (handlers) {
    const history = yield* History
    const ingest = yield* Ingest
    const changes = yield* Changes
    const chats = yield* Chats
    const fanout = yield* Fanout
    const membership = yield* Membership
    const limits = yield* RateLimits
    return handlers.handleAll({
      history: ({ params, query }) =>
        Effect.flatMap(CurrentUser, (user) =>
          history.page(user.id, params.chatId, {
            before: query.before,
            after: query.after,
            limit: query.limit ?? DefaultPageSize
          })
        ),
      send: ({ params, payload }) =>
        Effect.flatMap(CurrentUser, (user) => ingest.send(user.id, params.chatId, payload.clientMsgId, payload.body)),
      read: ({ params, payload }) =>
        Effect.gen(function* () {
          const user = yield* CurrentUser
          yield* limits.take("write", user.id)
          yield* markRead({ membership, history, chats, fanout }, user.id, params.chatId, payload.seq)
        }),
      readPositions: ({ params }) =>
        Effect.flatMap(CurrentUser, (user) =>
          Effect.map(chats.readPositions(user.id, params.chatId), (reads) => ({ reads }))
        ),
      edit: ({ params, headers, payload }) =>
        Effect.flatMap(CurrentUser, (user) =>
          changes.edit(user.id, params.chatId, params.seq, payload.body, headers["idempotency-key"])
        ),
      deleteMessage: ({ params, headers }) =>
        Effect.flatMap(CurrentUser, (user) =>
          changes.delete(user.id, params.chatId, params.seq, headers["idempotency-key"])
        ),
      react: ({ params, headers }) =>
        Effect.flatMap(CurrentUser, (user) =>
          changes.react(user.id, params.chatId, params.seq, params.emoji, true, headers["idempotency-key"])
        ),
      unreact: ({ params, headers }) =>
        Effect.flatMap(CurrentUser, (user) =>
          changes.react(user.id, params.chatId, params.seq, params.emoji, false, headers["idempotency-key"])
        )
    })
  })
)

/** The default search page size (docs/protocol.md "Search"). */
const DefaultSearchPage = 20

const SearchHandlers = HttpApiBuilder.group(
  Api,
  "search",
  Effect.fn(function* (handlers) {
    const index = yield* SearchIndex
    const membership = yield* Membership
    const limits = yield* RateLimits
    return handlers.handleAll({
      // Membership is checked again inside the query itself: hits come only
      // from chats the caller is a member of when it runs.
      search: ({ query }) =>
        Effect.gen(function* () {
          const user = yield* CurrentUser
          yield* limits.take("search", user.id)
          if (query.chatId !== undefined) yield* memberRole(membership, query.chatId, user.id)
          return yield* index.search(user.id, {
            q: query.q,
            chatId: query.chatId,
            before: query.before,
            limit: query.limit ?? DefaultSearchPage
          })
        })
    })
  })
)

const SystemHandlers = HttpApiBuilder.group(
  Api,
  "system",
  Effect.fn(function* (handlers) {
    const readiness = yield* Readiness
    return handlers.handleAll({
      healthz: () => Effect.succeed({ status: "ok" as const }),
      readyz: () =>
        Effect.flatMap(readiness.check, ({ ready, checks }) =>
          ready
            ? Effect.succeed({ status: "ready" as const, checks })
            : Effect.fail(
                new Unavailable({
                  message: `not ready: ${Object.entries(checks)
                    .filter(([, outcome]) => outcome !== "ok")
                    .map(([name, outcome]) => `${name} ${outcome}`)
                    .join(", ")}`
                })
              )
        )
    })
  })
)

export const HandlersLive = Layer.mergeAll(
  AuthHandlers,
  MeHandlers,
  ChatsHandlers,
  MessagesHandlers,
  SearchHandlers,
  SystemHandlers
).pipe(Layer.provide(AuthenticationLive))
