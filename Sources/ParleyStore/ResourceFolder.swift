import Foundation

/// A folder the relay ships beside its binary (`migrations`, `web`).
public enum ResourceFolder {
    /// Where folder `name` is when none is configured: `./<name>`, then the installed copy
    /// beside the binary (`../share/parley/<name>`), then the checkout the binary was built
    /// in (found by walking up from it to a folder with Package.swift). Nil when none exists.
    public static func locate(_ name: String,
                              executable: URL = URL(fileURLWithPath: CommandLine.arguments.first ?? ".")) -> URL? {
        let fileManager = FileManager.default
        var candidates = [URL(fileURLWithPath: fileManager.currentDirectoryPath).appendingPathComponent(name)]
        let binaryFolder = executable.resolvingSymlinksInPath().deletingLastPathComponent()
        candidates.append(binaryFolder.appendingPathComponent("../share/parley/\(name)").standardizedFileURL)
        var folder = binaryFolder
        while folder.path != "/" {
            if fileManager.fileExists(atPath: folder.appendingPathComponent("Package.swift").path) {
                candidates.append(folder.appendingPathComponent(name))
                break
            }
            folder = folder.deletingLastPathComponent()
        }
        return candidates.first { url in
            var isFolder: ObjCBool = false
            return fileManager.fileExists(atPath: url.path, isDirectory: &isFolder) && isFolder.boolValue
        }
    }
}
