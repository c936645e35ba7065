/**
 * The full-text index of message bodies (table `search_messages`, a
 * `tsvector` with a GIN index; Postgres and PGlite alike). The search
 * indexer (src/messages/SearchIndexer.ts) and `harmony reindex` write it;
 * `search` reads it for one caller, joined with the caller's memberships in
 * the same statement, so a hit is only ever from a chat the caller is a
 * member of at the moment of the query.
 *
 * Words are matched with the `simple` configuration (no stemming, no stop
 * words: chats are in every language); the query is `websearch_to_tsquery`
 * syntax (words, "quoted phrases", `or`, `-word`).
 */
import { Array as Arr, Context, Effect, Layer, Schema } from "effect"
import { SqlClient } from "effect/sql"
import type { SqlError } from "effect/sql/SqlError"
import type { ChatId, Message, MessageId, UserId } from "../schema/Domain.ts"
import { BadRequest, type Unavailable } from "../schema/Errors.ts"
import { iso, orUnavailable } from "./Db.ts"

/** One hit: where the message is, and a snippet with the matched words' ranges in it. */
export interface SearchHit {
  readonly chatId: ChatId
  readonly seq: number
  readonly id: MessageId
  readonly authorId: UserId
  readonly createdAt: string
  readonly snippet: string
  /** [start, end) offsets into `snippet` (UTF-16 code units) of the matched words. */
  readonly highlights: ReadonlyArray<readonly [number, number]>
}

export interface SearchQuery {
  readonly q: string
  readonly chatId?: ChatId | undefined
  /** The previous page's `nextBefore`: hits ranked after it. */
  readonly before?: string | undefined
  readonly limit: number
}

export interface SearchPage {
  readonly hits: ReadonlyArray<SearchHit>
  /** The cursor of the next page, null on the last one. */
  readonly nextBefore: string | null
}

/** How a message reaches the index: as the store holds it (a deleted one has no body). */
export type IndexedMessage = Pick<Message, "chatId" | "seq" | "id" | "authorId" | "createdAt"> & {
  readonly body: string | null
}

/** A body up to this many characters is its own snippet; a longer one gives fragments around the matches. */
const WholeBody = 200

// The snippet's match markers; removed from bodies before highlighting, so they cannot be forged.
const Start = "\u0002"
const Stop = "\u0003"

/** Splits ts_headline's marked text into plain text and match ranges. */
export const unmark = (marked: string): Pick<SearchHit, "snippet" | "highlights"> => {
  let snippet = ""
  let start = -1
  const highlights: Array<readonly [number, number]> = []
  for (const char of marked) {
    if (char === Start) start = snippet.length
    else if (char === Stop) {
      if (start >= 0) highlights.push([start, snippet.length])
      start = -1
    } else snippet += char
  }
  return { snippet, highlights }
}

/** The cursor: the last hit's (rank, chat, seq), the ranking's sort key. */
const Cursor = Schema.Tuple([Schema.String.check(Schema.isPattern(/^[0-9.e+-]+$/)), Schema.String, Schema.Int])
const CursorJson = Schema.fromJsonString(Cursor)
const encodeCursor = (rank: string, chatId: string, seq: number) =>
  Buffer.from(Schema.encodeSync(CursorJson)([rank, chatId, seq])).toString("base64url")
const decodeCursor = (cursor: string) =>
  Schema.decodeUnknownEffect(CursorJson)(Buffer.from(cursor, "base64url").toString()).pipe(
    Effect.mapError(() => new BadRequest({ message: "before is not a cursor this server gave out" }))
  )

interface HitRow {
  readonly chat_id: string
  readonly seq: string | number
  readonly message_id: string
  readonly author_id: string
  readonly created_at: Date | string
  readonly rank: string
  readonly snippet: string
}

export class SearchIndex extends Context.Service<
  SearchIndex,
  {
    /**
     * Adds messages the index does not hold yet (idempotent by chat and seq:
     * a row already there, a deleted one included, is left as it is).
     */
    readonly add: (messages: ReadonlyArray<IndexedMessage>) => Effect.Effect<void, SqlError>
    /** Writes messages as the store holds them, over what the index has (reindex). */
    readonly replace: (messages: ReadonlyArray<IndexedMessage>) => Effect.Effect<void, SqlError>
    /** An edit: the message's indexed text becomes `body` (a deleted message stays deleted). */
    readonly edit: (chatId: ChatId, seq: number, body: string) => Effect.Effect<void, SqlError>
    /** A delete: the message's text leaves the index (its row stays, without a body). */
    readonly remove: (chatId: ChatId, seq: number) => Effect.Effect<void, SqlError>
    /** The highest seq indexed for the chat (0 when none). */
    readonly watermark: (chatId: ChatId) => Effect.Effect<number, SqlError>
    /** `watermark` of several chats in one query (a chat absent from the answer has none). */
    readonly watermarks: (chatIds: ReadonlyArray<ChatId>) => Effect.Effect<ReadonlyMap<ChatId, number>, SqlError>
    /** Of `ids`, the message ids the index holds for the chat. */
    readonly holds: (chatId: ChatId, ids: ReadonlyArray<string>) => Effect.Effect<ReadonlySet<string>, SqlError>
    /** Drops the chat's rows past `seq` (reindex: what the store no longer holds). */
    readonly dropAfter: (chatId: ChatId, seq: number) => Effect.Effect<void, SqlError>
    /** One page of the caller's hits, best first. */
    readonly search: (userId: UserId, query: SearchQuery) => Effect.Effect<SearchPage, BadRequest | Unavailable>
    /** The index's size on disk in bytes (table, GIN and btree indexes, TOAST). */
    readonly sizeOnDisk: Effect.Effect<number, SqlError>
  }
>()("harmony/state/SearchIndex") {
  static readonly layer = Layer.effect(
    SearchIndex,
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient

      const rows = (messages: ReadonlyArray<IndexedMessage>) =>
        messages.map((m) => ({
          chat_id: m.chatId,
          seq: m.seq,
          message_id: m.id,
          author_id: m.authorId,
          created_at: m.createdAt,
          body: m.body
        }))

      const add = (messages: ReadonlyArray<IndexedMessage>) => {
        const values = rows(messages)
        if (!Arr.isArrayNonEmpty(values)) return Effect.void
        return sql`INSERT INTO search_messages ${sql.insert(values)} ON CONFLICT (chat_id, seq) DO NOTHING`.pipe(
          Effect.asVoid,
          Effect.withSpan("SearchIndex.add", { attributes: { "harmony.batch.size": values.length } })
        )
      }

      const replace = (messages: ReadonlyArray<IndexedMessage>) => {
        const values = rows(messages)
        if (!Arr.isArrayNonEmpty(values)) return Effect.void
        return sql`
          INSERT INTO search_messages ${sql.insert(values)}
          ON CONFLICT (chat_id, seq) DO UPDATE SET message_id = EXCLUDED.message_id,
            author_id = EXCLUDED.author_id, created_at = EXCLUDED.created_at, body = EXCLUDED.body`.pipe(Effect.asVoid)
      }

      const edit = (chatId: ChatId, seq: number, body: string) =>
        sql`UPDATE search_messages SET body = ${body}
            WHERE chat_id = ${chatId} AND seq = ${seq} AND body IS NOT NULL`.pipe(Effect.asVoid)

      const remove = (chatId: ChatId, seq: number) =>
        sql`UPDATE search_messages SET body = NULL WHERE chat_id = ${chatId} AND seq = ${seq}`.pipe(Effect.asVoid)

      const watermark = (chatId: ChatId) =>
        sql<{ seq: string | null }>`SELECT max(seq) AS seq FROM search_messages WHERE chat_id = ${chatId}`.pipe(
          Effect.map(([row]) => Number(row?.seq ?? 0))
        )

      // One index probe per chat (the primary key, newest first), however many rows the chats hold.
      const watermarks = (chatIds: ReadonlyArray<ChatId>) => {
        const values = chatIds.map((chat_id) => ({ chat_id }))
        if (!Arr.isArrayNonEmpty(values)) return Effect.succeed(new Map<ChatId, number>())
        return sql<{ chat_id: ChatId; seq: string | number | null }>`
          SELECT v.chat_id, (SELECT max(s.seq) FROM search_messages s WHERE s.chat_id = v.chat_id) AS seq
          FROM ${sql.updateValues(values, "v")}`.pipe(
          Effect.map(
            (found) =>
              new Map(found.flatMap((row) => (row.seq === null ? [] : [[row.chat_id, Number(row.seq)] as const])))
          )
        )
      }

      const holds = (chatId: ChatId, ids: ReadonlyArray<string>) =>
        ids.length === 0
          ? Effect.succeed(new Set<string>())
          : sql<{ message_id: string }>`
              SELECT message_id FROM search_messages
              WHERE chat_id = ${chatId} AND ${sql.in("message_id", ids)}`.pipe(
              Effect.map((found) => new Set(found.map((row) => row.message_id)))
            )

      const dropAfter = (chatId: ChatId, seq: number) =>
        sql`DELETE FROM search_messages WHERE chat_id = ${chatId} AND seq > ${seq}`.pipe(Effect.asVoid)

      const search = Effect.fn("SearchIndex.search")(function* (userId: UserId, query: SearchQuery) {
        const cursor = query.before === undefined ? undefined : yield* decodeCursor(query.before)
        const inChat = query.chatId === undefined ? sql`` : sql`AND s.chat_id = ${query.chatId}`
        const after =
          cursor === undefined
            ? sql``
            : sql`AND (h.rank < ${cursor[0]}::real OR (h.rank = ${cursor[0]}::real
                  AND (h.chat_id > ${cursor[1]} OR (h.chat_id = ${cursor[1]} AND h.seq < ${cursor[2]}))))`
        // Ranked over the caller's chats only; snippets are made for the page alone.
        const found = yield* sql<HitRow>`
          WITH q AS (SELECT websearch_to_tsquery('simple', ${query.q}) AS query),
          hits AS (
            SELECT s.chat_id, s.seq, s.message_id, s.author_id, s.created_at, s.body,
                   ts_rank_cd(s.tsv, q.query) AS rank
            FROM q, search_messages s
            JOIN memberships m ON m.chat_id = s.chat_id AND m.user_id = ${userId}
            WHERE s.tsv @@ q.query ${inChat}
          ),
          page AS (
            SELECT * FROM hits h WHERE true ${after}
            ORDER BY h.rank DESC, h.chat_id, h.seq DESC
            LIMIT ${query.limit + 1}
          )
          SELECT chat_id, seq, message_id, author_id, created_at, rank::text AS rank,
                 ts_headline('simple', translate(body, ${Start + Stop}, ''), (SELECT query FROM q),
                   'StartSel=' || chr(2) || ', StopSel=' || chr(3) || CASE WHEN length(body) <= ${WholeBody}
                     THEN ', HighlightAll=true'
                     ELSE ', MaxWords=24, MinWords=8, ShortWord=0, MaxFragments=2, FragmentDelimiter=" … "' END
                 ) AS snippet
          FROM page ORDER BY rank DESC, chat_id, seq DESC`
        const more = found.length > query.limit
        const hits = found.slice(0, query.limit).map(
          (row): SearchHit => ({
            chatId: row.chat_id as ChatId,
            seq: Number(row.seq),
            id: row.message_id as MessageId,
            authorId: row.author_id as UserId,
            createdAt: iso(row.created_at),
            ...unmark(row.snippet)
          })
        )
        const last = found[query.limit - 1]
        return {
          hits,
          nextBefore: more && last !== undefined ? encodeCursor(last.rank, last.chat_id, Number(last.seq)) : null
        }
      }, orUnavailable)

      const sizeOnDisk = sql<{ bytes: string }>`
        SELECT pg_total_relation_size('search_messages') AS bytes`.pipe(Effect.map(([row]) => Number(row?.bytes ?? 0)))

      return SearchIndex.of({ add, replace, edit, remove, watermark, watermarks, holds, dropAfter, search, sizeOnDisk })
    })
  )
}
