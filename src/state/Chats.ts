/**
 * Chats and memberships (docs/protocol.md HTTP, `/v1/chats`). Every change runs
 * in one transaction that locks the chat row (so concurrent membership
 * changes of one chat serialize) and appends its events to the outbox.
 * A chat the caller is not a member of is `not_found`, exactly like an
 * unknown chat.
 */
import { Array as Arr, Clock, Context, Effect, Layer, Option } from "effect"
import { SqlClient } from "effect/sql"
import type { SqlError } from "effect/sql/SqlError"
import { randomUUID } from "node:crypto"
import {
  Chat,
  type ChatId,
  type ChatKind,
  ChatSummary,
  MaxGroupMembers,
  Member,
  ReadPosition,
  type Role,
  type UserId
} from "../schema/Domain.ts"
import { BadRequest, Conflict, Forbidden, NotFound, type Unavailable } from "../schema/Errors.ts"
import type { StateEvent } from "../schema/Events.ts"
import { iso, orUnavailable } from "./Db.ts"
import { Outbox } from "./Outbox.ts"

export interface CreateChat {
  readonly name?: string | undefined
  readonly kind: ChatKind
  readonly memberIds: ReadonlyArray<UserId>
}

interface ChatRow {
  readonly id: ChatId
  readonly name: string | null
  readonly kind: ChatKind
  readonly owner_id: UserId | null
  readonly created_at: Date
}

interface MemberRow {
  readonly user_id: UserId
  readonly role: Role
}

type Failure = BadRequest | Forbidden | NotFound | Conflict | Unavailable

export class Chats extends Context.Service<
  Chats,
  {
    readonly create: (callerId: UserId, input: CreateChat) => Effect.Effect<Chat, BadRequest | Unavailable>
    readonly get: (callerId: UserId, chatId: ChatId) => Effect.Effect<Chat, NotFound | Unavailable>
    readonly rename: (callerId: UserId, chatId: ChatId, name: string) => Effect.Effect<Chat, Failure>
    /** Answers the members the chat had. */
    readonly delete: (callerId: UserId, chatId: ChatId) => Effect.Effect<ReadonlyArray<UserId>, Failure>
    readonly addMembers: (
      callerId: UserId,
      chatId: ChatId,
      userIds: ReadonlyArray<UserId>
    ) => Effect.Effect<Chat, Failure>
    /** Answers the members whose role changed: the one removed, and the new owner when the owner left. */
    readonly removeMember: (
      callerId: UserId,
      chatId: ChatId,
      userId: UserId
    ) => Effect.Effect<ReadonlyArray<UserId>, Failure>
    /**
     * The owner makes a member an admin or a member again, or hands ownership
     * to them (`owner`: the old owner becomes an admin).
     */
    readonly setRole: (callerId: UserId, chatId: ChatId, userId: UserId, role: Role) => Effect.Effect<Chat, Failure>
    /** The chat as it is now, whoever asks (the user channel's consumer), or none when it is gone. */
    readonly find: (chatId: ChatId) => Effect.Effect<Option.Option<Chat>, Unavailable>
    /** The chat, its last seq and the member's read position, or none when they are not a member (any more). */
    readonly membershipOf: (
      chatId: ChatId,
      userId: UserId
    ) => Effect.Effect<
      Option.Option<{ readonly chat: Chat; readonly lastSeq: number; readonly lastReadSeq: number }>,
      Unavailable
    >
    readonly listForUser: (userId: UserId) => Effect.Effect<ReadonlyArray<ChatSummary>, Unavailable>
    /** Moves the member's read position forward (never back); answers whether it moved. */
    readonly markRead: (userId: UserId, chatId: ChatId, seq: number) => Effect.Effect<boolean, NotFound | Unavailable>
    /** Every member's read position, for a member (read receipts after a reload). */
    readonly readPositions: (
      callerId: UserId,
      chatId: ChatId
    ) => Effect.Effect<ReadonlyArray<ReadPosition>, NotFound | Unavailable>
    /** The member's role, or none for a non-member or an unknown chat (authorization). */
    readonly roleOf: (chatId: ChatId, userId: UserId) => Effect.Effect<Option.Option<Role>, Unavailable>
    /**
     * Removes a closing account from every chat, inside the caller's
     * transaction: an owned chat passes to its oldest admin, else its oldest
     * member, and is deleted when nobody is left. Answers the chats left, each
     * with the members whose role changed there (the account, and an heir).
     */
    readonly leaveAll: (
      userId: UserId
    ) => Effect.Effect<ReadonlyArray<{ readonly chatId: ChatId; readonly changed: ReadonlyArray<UserId> }>, SqlError>
  }
>()("harmony/state/Chats") {
  static readonly layer = Layer.effect(
    Chats,
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const outbox = yield* Outbox

      const now = Effect.map(Clock.currentTimeMillis, (millis) => new Date(millis))

      const load = (chatId: ChatId) =>
        Effect.gen(function* () {
          const rows = yield* sql<ChatRow>`SELECT id, name, kind, owner_id, created_at FROM chats WHERE id = ${chatId}`
          const chat = rows[0]
          if (chat === undefined) return Option.none<Chat>()
          const members = yield* sql<MemberRow>`
            SELECT user_id, role FROM memberships WHERE chat_id = ${chatId} ORDER BY joined_at, user_id`
          return Option.some(
            new Chat({
              id: chat.id,
              name: chat.name,
              kind: chat.kind,
              ownerId: chat.owner_id,
              createdAt: iso(chat.created_at),
              members: members.map((m) => new Member({ userId: m.user_id, role: m.role }))
            })
          )
        })

      /** Locks the chat row and answers the caller's role; not a member → not found. */
      const lockAs = (chatId: ChatId, callerId: UserId) =>
        Effect.gen(function* () {
          const rows = yield* sql<{ kind: ChatKind; role: Role | null }>`
            SELECT c.kind, m.role FROM chats c
            LEFT JOIN memberships m ON m.chat_id = c.id AND m.user_id = ${callerId}
            WHERE c.id = ${chatId} FOR UPDATE OF c`
          const row = rows[0]
          if (row === undefined || row.role === null) {
            return yield* new NotFound({ message: `chat ${chatId} not found` })
          }
          return { kind: row.kind, role: row.role }
        })

      const notFound = (chatId: ChatId) => new NotFound({ message: `chat ${chatId} not found` })

      const activeUsers = (userIds: ReadonlyArray<UserId>) =>
        userIds.length === 0
          ? Effect.succeed(new Set<UserId>())
          : Effect.map(
              sql<{ id: UserId }>`SELECT id FROM users WHERE deleted_at IS NULL AND ${sql.in("id", userIds)}`,
              (rows) => new Set(rows.map((row) => row.id))
            )

      const requireUsers = (userIds: ReadonlyArray<UserId>) =>
        Effect.gen(function* () {
          const found = yield* activeUsers(userIds)
          const unknown = userIds.filter((id) => !found.has(id))
          if (unknown.length > 0) {
            return yield* new BadRequest({ message: `unknown users in memberIds: ${unknown.join(", ")}` })
          }
        })

      /**
       * Removes one membership, passing ownership on or deleting the emptied
       * chat; answers the members whose role changed (the one removed, and the
       * heir when it was the owner), whose cached roles are now stale.
       */
      const dropMember = (chatId: ChatId, userId: UserId) =>
        Effect.gen(function* () {
          const events: Array<StateEvent> = []
          const changed: Array<UserId> = [userId]
          const removed = yield* sql<{ role: Role }>`
            DELETE FROM memberships WHERE chat_id = ${chatId} AND user_id = ${userId} RETURNING role`
          const was = removed[0]
          if (was === undefined) return changed
          events.push({ _tag: "member.removed", chatId, userId })
          yield* sql`UPDATE chats SET direct_key = NULL WHERE id = ${chatId}`
          if (was.role === "owner") {
            const heirs = yield* sql<{ user_id: UserId }>`
              SELECT user_id FROM memberships WHERE chat_id = ${chatId}
              ORDER BY (role = 'admin') DESC, joined_at, user_id LIMIT 1`
            const heir = heirs[0]
            if (heir === undefined) {
              yield* sql`DELETE FROM chats WHERE id = ${chatId}`
              events.push({ _tag: "chat.deleted", chatId, memberIds: [] })
            } else {
              yield* sql`UPDATE memberships SET role = 'owner' WHERE chat_id = ${chatId} AND user_id = ${heir.user_id}`
              yield* sql`UPDATE chats SET owner_id = ${heir.user_id} WHERE id = ${chatId}`
              events.push({ _tag: "chat.owner_changed", chatId, ownerId: heir.user_id })
              changed.push(heir.user_id)
            }
          } else {
            const left = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM memberships WHERE chat_id = ${chatId}`
            if (left[0]?.n === 0) {
              yield* sql`DELETE FROM chats WHERE id = ${chatId}`
              events.push({ _tag: "chat.deleted", chatId, memberIds: [] })
            }
          }
          yield* outbox.append(events)
          return changed
        })

      const create = Effect.fn("Chats.create")(function* (callerId: UserId, input: CreateChat) {
        const others = [...new Set(input.memberIds)].filter((id) => id !== callerId)
        if (input.kind === "direct" && others.length !== 1) {
          return yield* new BadRequest({ message: "a direct chat has exactly one other member in memberIds" })
        }
        if (others.length + 1 > MaxGroupMembers) {
          return yield* new BadRequest({ message: `a group holds at most ${MaxGroupMembers} members` })
        }
        const createdAt = yield* now
        const directKey = input.kind === "direct" ? [callerId, ...others].sort().join(":") : null
        const chatId = yield* sql.withTransaction(
          Effect.gen(function* () {
            yield* requireUsers(others)
            if (directKey !== null) {
              // Two people have one direct chat: asking again answers the existing one.
              const existing = yield* sql<{ id: ChatId }>`SELECT id FROM chats WHERE direct_key = ${directKey}`
              const found = existing[0]
              if (found !== undefined) return found.id
            }
            const chatId = randomUUID() as ChatId
            yield* sql`INSERT INTO chats ${sql.insert({
              id: chatId,
              name: input.name ?? null,
              kind: input.kind,
              owner_id: callerId,
              direct_key: directKey,
              created_at: createdAt
            })}`
            yield* sql`INSERT INTO memberships ${sql.insert([
              { chat_id: chatId, user_id: callerId, role: "owner", joined_at: createdAt },
              ...others.map((userId) => ({ chat_id: chatId, user_id: userId, role: "member", joined_at: createdAt }))
            ])}`
            yield* outbox.append([
              { _tag: "chat.created", chatId, kind: input.kind, memberIds: [callerId, ...others] },
              ...others.map((userId): StateEvent => ({ _tag: "member.added", chatId, userId }))
            ])
            return chatId
          })
        )
        return Option.getOrThrow(yield* load(chatId))
      }, orUnavailable)

      const get = Effect.fn("Chats.get")(function* (callerId: UserId, chatId: ChatId) {
        const chat = yield* load(chatId)
        if (Option.isNone(chat) || !chat.value.members.some((m) => m.userId === callerId)) {
          return yield* notFound(chatId)
        }
        return chat.value
      }, orUnavailable)

      const rename = Effect.fn("Chats.rename")(function* (callerId: UserId, chatId: ChatId, name: string) {
        yield* sql.withTransaction(
          Effect.gen(function* () {
            const { role } = yield* lockAs(chatId, callerId)
            if (role === "member") return yield* new Forbidden({ message: "only the owner or an admin may rename" })
            yield* sql`UPDATE chats SET name = ${name} WHERE id = ${chatId}`
            yield* outbox.append([{ _tag: "chat.renamed", chatId, name }])
          })
        )
        return Option.getOrThrow(yield* load(chatId))
      }, orUnavailable)

      const deleteChat = Effect.fn("Chats.delete")(function* (callerId: UserId, chatId: ChatId) {
        return yield* sql.withTransaction(
          Effect.gen(function* () {
            const { role } = yield* lockAs(chatId, callerId)
            if (role !== "owner") return yield* new Forbidden({ message: "only the owner may delete a chat" })
            const members = yield* sql<{ user_id: UserId }>`
              DELETE FROM memberships WHERE chat_id = ${chatId} RETURNING user_id`
            yield* sql`DELETE FROM chats WHERE id = ${chatId}`
            const memberIds = members.map((m) => m.user_id)
            yield* outbox.append([{ _tag: "chat.deleted", chatId, memberIds }])
            return memberIds
          })
        )
      }, orUnavailable)

      const addMembers = Effect.fn("Chats.addMembers")(function* (
        callerId: UserId,
        chatId: ChatId,
        userIds: ReadonlyArray<UserId>
      ) {
        yield* sql.withTransaction(
          Effect.gen(function* () {
            const { kind, role } = yield* lockAs(chatId, callerId)
            if (role === "member")
              return yield* new Forbidden({ message: "only the owner or an admin may add members" })
            if (kind === "direct") return yield* new Conflict({ message: "a direct chat cannot take more members" })
            const wanted = [...new Set(userIds)]
            yield* requireUsers(wanted)
            const current = yield* sql<{ user_id: UserId }>`SELECT user_id FROM memberships WHERE chat_id = ${chatId}`
            const present = new Set(current.map((row) => row.user_id))
            const added = wanted.filter((id) => !present.has(id))
            if (present.size + added.length > MaxGroupMembers) {
              return yield* new Conflict({ message: `a group holds at most ${MaxGroupMembers} members` })
            }
            if (!Arr.isArrayNonEmpty(added)) return
            const joinedAt = yield* now
            yield* sql`INSERT INTO memberships ${sql.insert(
              Arr.map(added, (userId) => ({ chat_id: chatId, user_id: userId, role: "member", joined_at: joinedAt }))
            )}`
            yield* outbox.append(added.map((userId): StateEvent => ({ _tag: "member.added", chatId, userId })))
          })
        )
        return Option.getOrThrow(yield* load(chatId))
      }, orUnavailable)

      const removeMember = Effect.fn("Chats.removeMember")(function* (
        callerId: UserId,
        chatId: ChatId,
        userId: UserId
      ) {
        return yield* sql.withTransaction(
          Effect.gen(function* () {
            const { role } = yield* lockAs(chatId, callerId)
            if (userId !== callerId) {
              if (role === "member") {
                return yield* new Forbidden({ message: "only the owner or an admin may remove others" })
              }
              const target = yield* sql<{ role: Role }>`
                SELECT role FROM memberships WHERE chat_id = ${chatId} AND user_id = ${userId}`
              const theirs = target[0]?.role
              if (theirs === undefined) return yield* new NotFound({ message: `user ${userId} is not a member` })
              if (theirs === "owner" || (theirs === "admin" && role !== "owner")) {
                return yield* new Forbidden({ message: `an ${role} cannot remove an ${theirs}` })
              }
            }
            return yield* dropMember(chatId, userId)
          })
        )
      }, orUnavailable)

      const setRole = Effect.fn("Chats.setRole")(function* (
        callerId: UserId,
        chatId: ChatId,
        userId: UserId,
        role: Role
      ) {
        yield* sql.withTransaction(
          Effect.gen(function* () {
            const caller = yield* lockAs(chatId, callerId)
            if (caller.role !== "owner") return yield* new Forbidden({ message: "only the owner may change roles" })
            const target = yield* sql<{ role: Role }>`
              SELECT role FROM memberships WHERE chat_id = ${chatId} AND user_id = ${userId}`
            const theirs = target[0]?.role
            if (theirs === undefined) return yield* new NotFound({ message: `user ${userId} is not a member` })
            if (userId === callerId) {
              if (role === "owner") return
              return yield* new Conflict({ message: "the owner hands ownership to another member first" })
            }
            if (theirs === role) return
            const events: Array<StateEvent> = []
            if (role === "owner") {
              yield* sql`UPDATE memberships SET role = 'admin' WHERE chat_id = ${chatId} AND user_id = ${callerId}`
              yield* sql`UPDATE chats SET owner_id = ${userId} WHERE id = ${chatId}`
              events.push({ _tag: "member.role_changed", chatId, userId: callerId, role: "admin" })
              events.push({ _tag: "chat.owner_changed", chatId, ownerId: userId })
            }
            yield* sql`UPDATE memberships SET role = ${role} WHERE chat_id = ${chatId} AND user_id = ${userId}`
            events.push({ _tag: "member.role_changed", chatId, userId, role })
            yield* outbox.append(events)
          })
        )
        return Option.getOrThrow(yield* load(chatId))
      }, orUnavailable)

      const find = Effect.fn("Chats.find")(function* (chatId: ChatId) {
        return yield* load(chatId)
      }, orUnavailable)

      const membershipOf = Effect.fn("Chats.membershipOf")(function* (chatId: ChatId, userId: UserId) {
        const rows = yield* sql<{ last_seq: string | number; last_read_seq: string | number }>`
          SELECT c.last_seq, m.last_read_seq FROM memberships m JOIN chats c ON c.id = m.chat_id
          WHERE m.chat_id = ${chatId} AND m.user_id = ${userId}`
        const row = rows[0]
        if (row === undefined) return Option.none()
        const chat = yield* load(chatId)
        if (Option.isNone(chat)) return Option.none()
        return Option.some({ chat: chat.value, lastSeq: Number(row.last_seq), lastReadSeq: Number(row.last_read_seq) })
      }, orUnavailable)

      const listForUser = Effect.fn("Chats.listForUser")(function* (userId: UserId) {
        const rows = yield* sql<{
          id: ChatId
          name: string | null
          kind: ChatKind
          role: Role
          last_seq: string | number
          last_read_seq: string | number
        }>`
          SELECT c.id, c.name, c.kind, m.role, c.last_seq, m.last_read_seq
          FROM memberships m JOIN chats c ON c.id = m.chat_id
          WHERE m.user_id = ${userId}
          ORDER BY c.created_at DESC, c.id`
        return rows.map(
          (row) =>
            new ChatSummary({
              id: row.id,
              name: row.name,
              kind: row.kind,
              role: row.role,
              lastSeq: Number(row.last_seq),
              lastReadSeq: Number(row.last_read_seq)
            })
        )
      }, orUnavailable)

      const markRead = Effect.fn("Chats.markRead")(function* (userId: UserId, chatId: ChatId, seq: number) {
        const rows = yield* sql<{ moved: boolean }>`
          UPDATE memberships SET last_read_seq = GREATEST(last_read_seq, ${seq})
          WHERE chat_id = ${chatId} AND user_id = ${userId}
          RETURNING last_read_seq = ${seq} AS moved`
        const row = rows[0]
        if (row === undefined) return yield* notFound(chatId)
        return row.moved
      }, orUnavailable)

      const readPositions = Effect.fn("Chats.readPositions")(function* (callerId: UserId, chatId: ChatId) {
        const rows = yield* sql<{ user_id: UserId; last_read_seq: string | number }>`
          SELECT m.user_id, m.last_read_seq FROM memberships m
          WHERE m.chat_id = ${chatId}
            AND EXISTS (SELECT 1 FROM memberships me WHERE me.chat_id = ${chatId} AND me.user_id = ${callerId})
          ORDER BY m.user_id`
        // A non-member learns nothing, exactly as for an unknown chat.
        if (rows.length === 0) return yield* notFound(chatId)
        return rows.map((row) => new ReadPosition({ userId: row.user_id, seq: Number(row.last_read_seq) }))
      }, orUnavailable)

      const roleOf = Effect.fn("Chats.roleOf")(function* (chatId: ChatId, userId: UserId) {
        const rows = yield* sql<{ role: Role }>`
          SELECT role FROM memberships WHERE chat_id = ${chatId} AND user_id = ${userId}`
        return Option.fromNullishOr(rows[0]?.role)
      }, orUnavailable)

      const leaveAll = Effect.fn("Chats.leaveAll")(function* (userId: UserId) {
        const chats = yield* sql<{ chat_id: ChatId }>`
          SELECT chat_id FROM memberships WHERE user_id = ${userId} ORDER BY chat_id`
        const left: Array<{ chatId: ChatId; changed: ReadonlyArray<UserId> }> = []
        for (const { chat_id } of chats) {
          yield* sql`SELECT id FROM chats WHERE id = ${chat_id} FOR UPDATE`
          left.push({ chatId: chat_id, changed: yield* dropMember(chat_id, userId) })
        }
        return left
      })

      return Chats.of({
        create,
        get,
        rename,
        delete: deleteChat,
        addMembers,
        removeMember,
        setRole,
        find,
        membershipOf,
        listForUser,
        markRead,
        readPositions,
        roleOf,
        leaveAll
      })
    })
  )
}

/**
 * `chats.last_seq` feeds `lastSeq` of `/v1/me/chats`: the sequencing layer
 * records here what it persisted. It never goes backwards.
 */

/** Raises one chat's last seq to at least `seq`; answers whether the chat exists. */
export const recordLastSeq = (chatId: ChatId, seq: number): Effect.Effect<boolean, SqlError, SqlClient.SqlClient> =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql`
      UPDATE chats SET last_seq = GREATEST(last_seq, ${seq}) WHERE id = ${chatId} RETURNING id`
    return rows.length > 0
  })

/** Raises several chats' last seqs at once (a persisted batch). */
export const recordLastSeqs = (
  lastSeqs: ReadonlyMap<ChatId, number>
): Effect.Effect<void, SqlError, SqlClient.SqlClient> =>
  Effect.gen(function* () {
    const rows = Array.from(lastSeqs, ([id, seq]) => ({ id, seq: String(seq) }))
    if (!Arr.isArrayNonEmpty(rows)) return
    const sql = yield* SqlClient.SqlClient
    yield* sql`
      UPDATE chats SET last_seq = GREATEST(chats.last_seq, v.seq::bigint)
      FROM ${sql.updateValues(rows, "v")} WHERE chats.id = v.id`
  })
