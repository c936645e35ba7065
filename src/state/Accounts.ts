/**
 * Accounts and sessions (docs/protocol.md `/v1/auth`, `/v1/me`, `/v1/users`).
 * Passwords are argon2id; a login starts a refresh-token family; each
 * refresh rotates the token. A rotated token still works for a short grace
 * period (parallel refreshes from one client); used after that, it revokes
 * the whole family — the sign that it was stolen.
 */
import { hash, verify } from "@node-rs/argon2"
import { Clock, Context, Duration, Effect, Layer, Schedule } from "effect"
import { SqlClient } from "effect/sql"
import { isSqlError, type SqlError } from "effect/sql/SqlError"
import { randomUUID } from "node:crypto"
import { type ChatId, Session, User, type UserId } from "../schema/Domain.ts"
import { Conflict, NotFound, Unauthorized, type Unavailable } from "../schema/Errors.ts"
import { PubSub } from "../ports/PubSub.ts"
import { ControlChannel, encodeControlSignal } from "../schema/Control.ts"
import { Chats } from "./Chats.ts"
import { orUnavailable } from "./Db.ts"
import { Outbox } from "./Outbox.ts"
import { Tokens } from "./Tokens.ts"

/** How long a rotated refresh token keeps working (docs/protocol.md: at most 5 s). */
export const RefreshGracePeriod = Duration.seconds(5)

export const DeletedUserName = "Deleted user"

const announceRetry = Schedule.exponential("50 millis").pipe(Schedule.jittered)

export interface Registration {
  readonly username: string
  readonly password: string
  readonly displayName?: string | undefined
}

interface UserRow {
  readonly id: UserId
  readonly username: string
  readonly display_name: string
  readonly password_hash: string | null
  readonly deleted_at: Date | null
}

const toUser = (row: UserRow) =>
  new User({
    id: row.id,
    username: row.username,
    displayName: row.deleted_at === null ? row.display_name : DeletedUserName
  })

// `Algorithm` is an ambient const enum in @node-rs/argon2: 2 is Argon2id.
const argon2Options = { algorithm: 2, memoryCost: 19456, timeCost: 2, parallelism: 1 }

// Verifying against this keeps a login for an unknown username as slow as one
// for a wrong password, so timing does not reveal which usernames exist.
const dummyHash = "$argon2id$v=19$m=19456,t=2,p=1$2fCumf80rtFVS77CTIdIVA$Pusb/4oXc+6NE8hh6cNl35tZkylJrtArZ6VtqlVG5tQ"

const invalidCredentials = new Unauthorized({ message: "invalid username or password" })
const invalidRefresh = new Unauthorized({ message: "invalid refresh token" })

export class Accounts extends Context.Service<
  Accounts,
  {
    readonly register: (input: Registration) => Effect.Effect<Session, Conflict | Unavailable>
    readonly login: (username: string, password: string) => Effect.Effect<Session, Unauthorized | Unavailable>
    readonly refresh: (refreshToken: string) => Effect.Effect<Session, Unauthorized | Unavailable>
    readonly logout: (refreshToken: string) => Effect.Effect<void, Unauthorized | Unavailable>
    /** The user behind an access token; a closed account's tokens stop working at once. */
    readonly authenticate: (accessToken: string) => Effect.Effect<User, Unauthorized | Unavailable>
    /** Like `authenticate`, with when the token expires (milliseconds since the epoch) and its login. */
    readonly authenticateSession: (
      accessToken: string
    ) => Effect.Effect<
      { readonly user: User; readonly expiresAt: number; readonly familyId: string | undefined },
      Unauthorized | Unavailable
    >
    readonly get: (userId: UserId) => Effect.Effect<User, NotFound | Unavailable>
    readonly search: (prefix: string, limit: number) => Effect.Effect<ReadonlyArray<User>, Unavailable>
    /** Closes the account; answers the chats it left, each with the members whose role changed there. */
    readonly close: (
      userId: UserId
    ) => Effect.Effect<ReadonlyArray<{ readonly chatId: ChatId; readonly changed: ReadonlyArray<UserId> }>, Unavailable>
  }
>()("harmony/state/Accounts") {
  static readonly layer = Layer.effect(
    Accounts,
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const outbox = yield* Outbox
      const tokens = yield* Tokens
      const chats = yield* Chats
      const pubsub = yield* PubSub

      /**
       * Every node closes the sockets of an ended login (4001). Its access
       * tokens already stop working (authenticate checks the family); this
       * only hurries the open sockets, so a cache that stays down is logged.
       */
      const announceRevoked = (familyId: string) =>
        pubsub.publish(ControlChannel, encodeControlSignal({ type: "family_revoked", familyId })).pipe(
          Effect.retry({ schedule: announceRetry, times: 4 }),
          Effect.catchTag("CacheError", (error) =>
            Effect.logWarning("ended login not announced: its sockets stay open until they re-authenticate", error)
          )
        )

      const now = Effect.map(Clock.currentTimeMillis, (millis) => new Date(millis))

      /** Issues an access token and a new refresh token in `familyId`. */
      const startSession = (user: User, familyId: string) =>
        Effect.gen(function* () {
          const refresh = tokens.newRefresh()
          const createdAt = yield* now
          yield* sql`INSERT INTO refresh_tokens ${sql.insert({
            id: refresh.id,
            family_id: familyId,
            user_id: user.id,
            secret_hash: tokens.hashSecret(refresh.secret),
            created_at: createdAt,
            expires_at: new Date(createdAt.getTime() + Duration.toMillis(tokens.refreshTokenTtl))
          })}`
          const accessToken = yield* tokens.issueAccess(user.id, familyId)
          return new Session({
            user,
            accessToken,
            refreshToken: refresh.token,
            expiresIn: Math.floor(Duration.toSeconds(tokens.accessTokenTtl))
          })
        })

      const register = Effect.fn("Accounts.register")(function* (input: Registration) {
        const passwordHash = yield* Effect.promise(() => hash(input.password, argon2Options))
        const user = new User({
          id: randomUUID() as UserId,
          username: input.username,
          displayName: input.displayName ?? input.username
        })
        return yield* sql
          .withTransaction(
            Effect.gen(function* () {
              yield* sql`INSERT INTO users ${sql.insert({
                id: user.id,
                username: user.username,
                display_name: user.displayName,
                password_hash: passwordHash,
                created_at: yield* now
              })}`
              yield* outbox.append([{ _tag: "user.registered", userId: user.id, username: user.username }])
              return yield* startSession(user, randomUUID())
            })
          )
          .pipe(
            Effect.catchIf(
              (error): error is SqlError => isSqlError(error) && error.reason._tag === "UniqueViolation",
              () => Effect.fail(new Conflict({ message: `username ${input.username} is taken` }))
            )
          )
      }, orUnavailable)

      const login = Effect.fn("Accounts.login")(function* (username: string, password: string) {
        const rows = yield* sql<UserRow>`
          SELECT id, username, display_name, password_hash, deleted_at FROM users WHERE username = ${username}`
        const row = rows[0]
        const passwordHash = row?.deleted_at === null ? row.password_hash : null
        const ok = yield* Effect.promise(() => verify(passwordHash ?? dummyHash, password).catch(() => false))
        if (row === undefined || passwordHash === null || !ok) return yield* invalidCredentials
        return yield* sql.withTransaction(startSession(toUser(row), randomUUID()))
      }, orUnavailable)

      const refresh = Effect.fn("Accounts.refresh")(function* (refreshToken: string) {
        const { id, secret } = yield* tokens.parseRefresh(refreshToken)
        const outcome = yield* sql.withTransaction(
          Effect.gen(function* () {
            const rows = yield* sql<{
              family_id: string
              user_id: UserId
              secret_hash: string
              expires_at: Date
              rotated_at: Date | null
              revoked_at: Date | null
            }>`
              SELECT family_id, user_id, secret_hash, expires_at, rotated_at, revoked_at
              FROM refresh_tokens WHERE id = ${id} FOR UPDATE`
            const token = rows[0]
            if (token === undefined || !tokens.secretMatches(secret, token.secret_hash))
              return { _tag: "invalid" as const }
            const at = yield* now
            if (token.revoked_at !== null || token.expires_at.getTime() <= at.getTime())
              return { _tag: "invalid" as const }
            if (
              token.rotated_at !== null &&
              at.getTime() - token.rotated_at.getTime() > Duration.toMillis(RefreshGracePeriod)
            ) {
              // Reuse after the grace period: whoever holds this token is not
              // the client that rotated it. End every session of the login.
              yield* sql`UPDATE refresh_tokens SET revoked_at = ${at}
                         WHERE family_id = ${token.family_id} AND revoked_at IS NULL`
              return { _tag: "reused" as const, familyId: token.family_id }
            }
            const users = yield* sql<UserRow>`
              SELECT id, username, display_name, password_hash, deleted_at FROM users WHERE id = ${token.user_id}`
            const user = users[0]
            if (user === undefined || user.deleted_at !== null) return { _tag: "invalid" as const }
            if (token.rotated_at === null) yield* sql`UPDATE refresh_tokens SET rotated_at = ${at} WHERE id = ${id}`
            return { _tag: "ok" as const, session: yield* startSession(toUser(user), token.family_id) }
          })
        )
        if (outcome._tag === "ok") return outcome.session
        if (outcome._tag === "reused") {
          yield* Effect.logWarning("refresh token reused after rotation: token family revoked")
          yield* announceRevoked(outcome.familyId)
          return yield* new Unauthorized({ message: "refresh token reused: every session of this login has ended" })
        }
        return yield* invalidRefresh
      }, orUnavailable)

      const logout = Effect.fn("Accounts.logout")(function* (refreshToken: string) {
        const { id, secret } = yield* tokens.parseRefresh(refreshToken)
        const rows = yield* sql<{ family_id: string; secret_hash: string }>`
          SELECT family_id, secret_hash FROM refresh_tokens WHERE id = ${id}`
        const token = rows[0]
        if (token === undefined || !tokens.secretMatches(secret, token.secret_hash)) return yield* invalidRefresh
        yield* sql`UPDATE refresh_tokens SET revoked_at = ${yield* now}
                   WHERE family_id = ${token.family_id} AND revoked_at IS NULL`
        yield* announceRevoked(token.family_id)
      }, orUnavailable)

      const findUser = (userId: UserId) =>
        Effect.map(
          sql<UserRow>`SELECT id, username, display_name, password_hash, deleted_at FROM users WHERE id = ${userId}`,
          (rows) => rows[0]
        )

      // One query answers both: the account is open, and the token's login
      // has not ended (logout, refresh-token reuse, account closed) — that
      // is, some refresh token of its family is still unrevoked.
      const authenticateSession = Effect.fn("Accounts.authenticate")(function* (accessToken: string) {
        const { userId, expiresAt, familyId } = yield* tokens.verifyAccess(accessToken)
        const rows = yield* sql<UserRow & { readonly login_open: boolean }>`
          SELECT id, username, display_name, password_hash, deleted_at,
            ${
              familyId === undefined
                ? sql`TRUE`
                : sql`EXISTS (SELECT 1 FROM refresh_tokens
                              WHERE family_id = ${familyId} AND user_id = ${userId} AND revoked_at IS NULL)`
            } AS login_open
          FROM users WHERE id = ${userId}`
        const row = rows[0]
        if (row === undefined || row.deleted_at !== null) {
          return yield* new Unauthorized({ message: "the account is closed" })
        }
        if (!row.login_open) return yield* new Unauthorized({ message: "this login has ended: log in again" })
        return { user: toUser(row), expiresAt, familyId }
      }, orUnavailable)
      const authenticate = (accessToken: string) => Effect.map(authenticateSession(accessToken), (s) => s.user)

      const get = Effect.fn("Accounts.get")(function* (userId: UserId) {
        const row = yield* findUser(userId)
        if (row === undefined) return yield* new NotFound({ message: `user ${userId} not found` })
        return toUser(row)
      }, orUnavailable)

      const search = Effect.fn("Accounts.search")(function* (prefix: string, limit: number) {
        // LIKE metacharacters in the prefix match themselves.
        const pattern = `${prefix.replace(/[\\%_]/g, (c) => `\\${c}`)}%`
        const rows = yield* sql<UserRow>`
          SELECT id, username, display_name, password_hash, deleted_at FROM users
          WHERE deleted_at IS NULL AND username LIKE ${pattern}
          ORDER BY username LIMIT ${limit}`
        return rows.map(toUser)
      }, orUnavailable)

      const close = Effect.fn("Accounts.close")(function* (userId: UserId) {
        return yield* sql.withTransaction(
          Effect.gen(function* () {
            const at = yield* now
            // The row stays (messages keep their author, the username stays
            // taken); the credentials go.
            yield* sql`UPDATE users SET deleted_at = ${at}, password_hash = NULL
                       WHERE id = ${userId} AND deleted_at IS NULL`
            yield* sql`UPDATE refresh_tokens SET revoked_at = ${at} WHERE user_id = ${userId} AND revoked_at IS NULL`
            const left = yield* chats.leaveAll(userId)
            yield* outbox.append([{ _tag: "user.deleted", userId }])
            return left
          })
        )
      }, orUnavailable)

      return Accounts.of({ register, login, refresh, logout, authenticate, authenticateSession, get, search, close })
    })
  )
}
