import Foundation

/// A user, channel, key, challenge or client message id: a lowercase canonical UUID
/// string (36 characters, lowercase hex, hyphens at offsets 8, 13, 18 and 23).
///
/// Ids compare as strings, which is the order the contract uses for member lists.
public struct ID: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The canonical lowercase text.
    public let string: String

    /// Accepts only the canonical lowercase form; uppercase or braces give nil.
    public init?(_ text: String) {
        guard ID.isCanonical(text) else { return nil }
        string = text
    }

    /// The id of a Foundation UUID.
    public init(_ uuid: UUID) {
        string = uuid.uuidString.lowercased()
    }

    /// A fresh random (version 4) id.
    public static func random() -> ID {
        ID(UUID())
    }

    /// The id as a Foundation UUID.
    public var uuid: UUID? { UUID(uuidString: string) }

    public var description: String { string }

    public static func < (lhs: ID, rhs: ID) -> Bool {
        // Canonical ids are ASCII, so byte order is string order.
        lhs.string.utf8.lexicographicallyPrecedes(rhs.string.utf8)
    }

    /// Whether `text` is a lowercase canonical UUID string.
    public static func isCanonical(_ text: String) -> Bool {
        var count = 0
        for byte in text.utf8 {
            switch count {
            case 8, 13, 18, 23:
                if byte != UInt8(ascii: "-") { return false }
            default:
                let isDigit = byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
                let isLowerHex = byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "f")
                if !(isDigit || isLowerHex) { return false }
            }
            count += 1
            if count > 36 { return false }
        }
        return count == 36
    }
}
