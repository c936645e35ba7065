/**
 * The one error the SDK fails with. `code` is the contract's error code when
 * the server answered (HTTP error body or WebSocket `error` frame, with the
 * HTTP `status` when there is one), or one of the client's own codes when it
 * could not get an answer at all.
 */
import { Schema } from "effect"
import { ErrorCode } from "../schema/Errors.ts"

/** Codes the client raises itself: no usable answer from the server. */
export const ClientErrorCode = Schema.Literals([
  /** fetch failed, or the WebSocket could not connect: nothing came back. */
  "network",
  /** An answer that does not match the contract (a 500 `internal`, an undecodable body or frame). */
  "internal",
  /** The WebSocket closed with 4400 or 1009: the server thinks this client sent bad frames (a bug). */
  "protocol",
  /** The client was closed (or logged out) while the call waited. */
  "closed"
])
export type ClientErrorCode = typeof ClientErrorCode.Type

export const HarmonyErrorCode = Schema.Union([ErrorCode, ClientErrorCode])
export type HarmonyErrorCode = typeof HarmonyErrorCode.Type

export class HarmonyError extends Schema.TaggedError<HarmonyError>()("HarmonyError", {
  code: HarmonyErrorCode,
  message: Schema.String,
  /** The HTTP status, when the error is an HTTP answer. */
  status: Schema.optionalKey(Schema.Int),
  /** From `Retry-After`, on `rate_limited` HTTP answers. */
  retryAfterSeconds: Schema.optionalKey(Schema.Number)
}) {
  /** Whether trying the same thing again later may succeed (sends are retried on these). */
  get transient(): boolean {
    return isTransient(this.code)
  }
}

const transientCodes: ReadonlySet<HarmonyErrorCode> = new Set(["network", "unavailable", "rate_limited", "internal"])
export const isTransient = (code: HarmonyErrorCode): boolean => transientCodes.has(code)

const isKnownCode = Schema.is(HarmonyErrorCode)

/** An error from a server's `code` and `message` (an unknown code — a newer server — counts as `internal`). */
export const fromWire = (code: string, message: string, status?: number, retryAfterSeconds?: number): HarmonyError =>
  new HarmonyError({
    code: isKnownCode(code) ? code : "internal",
    message: isKnownCode(code) ? message : `${code}: ${message}`,
    ...(status === undefined ? {} : { status }),
    ...(retryAfterSeconds === undefined ? {} : { retryAfterSeconds })
  })
