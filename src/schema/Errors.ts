/**
 * The errors a caller can act on. Each is a tagged error inside the program
 * and, on the wire, `{"error":{"code","message"}}` with its HTTP status
 * (docs/protocol.md "Errors"); the WebSocket `error` frame uses the same codes.
 */
import { Schema, SchemaTransformation } from "effect"
import { HttpApiSchema } from "effect/http-api"

export class BadRequest extends Schema.TaggedError<BadRequest>()("BadRequest", { message: Schema.String }) {
  static readonly code = "bad_request"
  static readonly status = 400
}
export class Unauthorized extends Schema.TaggedError<Unauthorized>()("Unauthorized", { message: Schema.String }) {
  static readonly code = "unauthorized"
  static readonly status = 401
}
export class Forbidden extends Schema.TaggedError<Forbidden>()("Forbidden", { message: Schema.String }) {
  static readonly code = "forbidden"
  static readonly status = 403
}
export class NotFound extends Schema.TaggedError<NotFound>()("NotFound", { message: Schema.String }) {
  static readonly code = "not_found"
  static readonly status = 404
}
export class Conflict extends Schema.TaggedError<Conflict>()("Conflict", { message: Schema.String }) {
  static readonly code = "conflict"
  static readonly status = 409
}
export class TooLarge extends Schema.TaggedError<TooLarge>()("TooLarge", { message: Schema.String }) {
  static readonly code = "too_large"
  static readonly status = 413
}
export class RateLimited extends Schema.TaggedError<RateLimited>()("RateLimited", {
  message: Schema.String,
  retryAfterSeconds: Schema.Int
}) {
  static readonly code = "rate_limited"
  static readonly status = 429
}
export class Unavailable extends Schema.TaggedError<Unavailable>()("Unavailable", { message: Schema.String }) {
  static readonly code = "unavailable"
  static readonly status = 503
}

export type ApiError =
  | BadRequest
  | Unauthorized
  | Forbidden
  | NotFound
  | Conflict
  | TooLarge
  | RateLimited
  | Unavailable

export const ErrorCode = Schema.Literals([
  "bad_request",
  "unauthorized",
  "forbidden",
  "not_found",
  "conflict",
  "too_large",
  "rate_limited",
  "unavailable"
])
export type ErrorCode = typeof ErrorCode.Type

/** The JSON body of every HTTP error. */
export const ErrorBody = Schema.Struct({
  error: Schema.Struct({ code: Schema.String, message: Schema.String })
})
export type ErrorBody = typeof ErrorBody.Type

const codeOf = {
  BadRequest: BadRequest.code,
  Unauthorized: Unauthorized.code,
  Forbidden: Forbidden.code,
  NotFound: NotFound.code,
  Conflict: Conflict.code,
  TooLarge: TooLarge.code,
  RateLimited: RateLimited.code,
  Unavailable: Unavailable.code
} as const satisfies Record<ApiError["_tag"], ErrorCode>

export const errorCode = (error: ApiError): ErrorCode => codeOf[error._tag]

export const errorBody = (code: string, message: string): ErrorBody => ({ error: { code, message } })

/**
 * The wire form of an error class for HttpApi endpoints: encodes the tagged
 * error as `{"error":{"code","message"}}` with the class's status.
 */
const wire = <Tag extends string, C extends Schema.Codec<any, { readonly _tag: Tag; readonly message: string }>>(
  schema: C,
  tag: Tag,
  code: ErrorCode,
  status: number
) =>
  Schema.Struct({ error: Schema.Struct({ code: Schema.Literal(code), message: Schema.String }) }).pipe(
    Schema.decodeTo(
      schema,
      SchemaTransformation.transform<
        C["Encoded"],
        { readonly error: { readonly code: ErrorCode; readonly message: string } }
      >({
        decode: ({ error }) => ({ _tag: tag, message: error.message }),
        encode: (e) => ({ error: { code, message: e.message } })
      })
    ),
    HttpApiSchema.status(status)
  )

export const BadRequestWire = wire(BadRequest, "BadRequest", BadRequest.code, BadRequest.status)
export const UnauthorizedWire = wire(Unauthorized, "Unauthorized", Unauthorized.code, Unauthorized.status)
export const ForbiddenWire = wire(Forbidden, "Forbidden", Forbidden.code, Forbidden.status)
export const NotFoundWire = wire(NotFound, "NotFound", NotFound.code, NotFound.status)
export const ConflictWire = wire(Conflict, "Conflict", Conflict.code, Conflict.status)
export const UnavailableWire = wire(Unavailable, "Unavailable", Unavailable.code, Unavailable.status)

/**
 * 429: the body carries `retryAfter` (seconds) only on its way out of the
 * handler — the HTTP error middleware moves it into the `Retry-After` header,
 * so clients see the usual `{"error":{"code","message"}}`.
 */
export const RateLimitedWire = Schema.Struct({
  error: Schema.Struct({ code: Schema.Literal("rate_limited"), message: Schema.String, retryAfter: Schema.Int })
}).pipe(
  Schema.decodeTo(
    RateLimited,
    SchemaTransformation.transform<
      (typeof RateLimited)["Encoded"],
      { readonly error: { readonly code: "rate_limited"; readonly message: string; readonly retryAfter: number } }
    >({
      decode: ({ error }) => ({ _tag: "RateLimited", message: error.message, retryAfterSeconds: error.retryAfter }),
      encode: (e) => ({ error: { code: "rate_limited", message: e.message, retryAfter: e.retryAfterSeconds } })
    })
  ),
  HttpApiSchema.status(RateLimited.status)
)
