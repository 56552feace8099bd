import CLibPQ
import Foundation

/// The rows of one query. Owns its `PGresult` and frees it in `deinit`; rows are read
/// in text format and decoded by the typed accessors of `Row`, which throw on a mismatch.
public final class QueryResult {
    private let handle: OpaquePointer

    init(taking handle: OpaquePointer) {
        self.handle = handle
    }

    deinit { PQclear(handle) }

    public var count: Int { Int(PQntuples(handle)) }
    public var isEmpty: Bool { count == 0 }
    public var columnCount: Int { Int(PQnfields(handle)) }

    /// The number of rows an INSERT, UPDATE or DELETE touched.
    public var affectedRows: Int { Int(String(cString: PQcmdTuples(handle))) ?? 0 }

    public var rows: [Row] { (0..<count).map { Row(result: self, index: $0) } }

    public var first: Row? { isEmpty ? nil : Row(result: self, index: 0) }

    public func columnIndex(_ name: String) -> Int? {
        let index = Int(PQfnumber(handle, name))
        return index < 0 ? nil : index
    }

    fileprivate func rawValue(row: Int, column: Int) throws -> UnsafeBufferPointer<UInt8>? {
        guard row >= 0, row < count, column >= 0, column < columnCount else {
            throw StoreError(.decodingFailed, detail: "no column \(column) in row \(row)")
        }
        let r = Int32(row), c = Int32(column)
        if PQgetisnull(handle, r, c) != 0 { return nil }
        guard let pointer = PQgetvalue(handle, r, c) else { return nil }
        let length = Int(PQgetlength(handle, r, c))
        return UnsafeBufferPointer(start: UnsafeRawPointer(pointer).assumingMemoryBound(to: UInt8.self), count: length)
    }

    fileprivate func columnName(_ column: Int) -> String {
        guard let name = PQfname(handle, Int32(column)) else { return "#\(column)" }
        return String(cString: name)
    }
}

/// One row of a `QueryResult`; valid while the result lives (it keeps it alive).
public struct Row {
    let result: QueryResult
    let index: Int

    public func isNull(_ column: Int) throws -> Bool {
        try result.rawValue(row: index, column: column) == nil
    }

    public func optionalString(_ column: Int) throws -> String? {
        guard let raw = try result.rawValue(row: index, column: column) else { return nil }
        return String(decoding: raw, as: UTF8.self)
    }

    public func string(_ column: Int) throws -> String {
        guard let value = try optionalString(column) else { throw nullValue(column) }
        return value
    }

    public func optionalInt64(_ column: Int) throws -> Int64? {
        guard let text = try optionalString(column) else { return nil }
        guard let value = Int64(text) else { throw mismatch(column, "an integer") }
        return value
    }

    public func int64(_ column: Int) throws -> Int64 {
        guard let value = try optionalInt64(column) else { throw nullValue(column) }
        return value
    }

    public func int(_ column: Int) throws -> Int {
        Int(try int64(column))
    }

    public func bool(_ column: Int) throws -> Bool {
        switch try string(column) {
        case "t": return true
        case "f": return false
        default: throw mismatch(column, "a boolean")
        }
    }

    public func optionalUUID(_ column: Int) throws -> UUID? {
        guard let text = try optionalString(column) else { return nil }
        guard let value = UUID(uuidString: text) else { throw mismatch(column, "a uuid") }
        return value
    }

    public func uuid(_ column: Int) throws -> UUID {
        guard let value = try optionalUUID(column) else { throw nullValue(column) }
        return value
    }

    /// A `bytea` in the text format's hex form (`\x0a1b…`, PostgreSQL's default output).
    public func optionalBytes(_ column: Int) throws -> [UInt8]? {
        guard let raw = try result.rawValue(row: index, column: column) else { return nil }
        guard raw.count >= 2, raw.count % 2 == 0, raw[0] == UInt8(ascii: "\\"), raw[1] == UInt8(ascii: "x") else {
            throw mismatch(column, "a bytea in hex form")
        }
        var bytes = [UInt8]()
        bytes.reserveCapacity((raw.count - 2) / 2)
        var position = 2
        while position < raw.count {
            guard let high = Self.hexValue(raw[position]), let low = Self.hexValue(raw[position + 1]) else {
                throw mismatch(column, "a bytea in hex form")
            }
            bytes.append(high << 4 | low)
            position += 2
        }
        return bytes
    }

    public func bytes(_ column: Int) throws -> [UInt8] {
        guard let value = try optionalBytes(column) else { throw nullValue(column) }
        return value
    }

    /// A one-dimensional `uuid[]`, e.g. `{a,b}`; elements are never quoted by PostgreSQL.
    public func uuidArray(_ column: Int) throws -> [UUID] {
        let text = try string(column)
        guard text.hasPrefix("{"), text.hasSuffix("}") else { throw mismatch(column, "an array") }
        let inner = text.dropFirst().dropLast()
        if inner.isEmpty { return [] }
        return try inner.split(separator: ",", omittingEmptySubsequences: false).map {
            guard let value = UUID(uuidString: String($0)) else { throw mismatch(column, "a uuid array") }
            return value
        }
    }

    private static func hexValue(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return digit - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return digit - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    private func nullValue(_ column: Int) -> StoreError {
        StoreError(.decodingFailed, detail: "column \(result.columnName(column)) is null")
    }

    private func mismatch(_ column: Int, _ expected: String) -> StoreError {
        StoreError(.decodingFailed, detail: "column \(result.columnName(column)) is not \(expected)")
    }
}
