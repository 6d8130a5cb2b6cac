"""Files as the package reads and writes them: only regular files are read (a FIFO or a device would block a
reader forever), text is decoded from its byte-order mark or strictly as UTF-8, and a group of files is written
under temporary names in its folder and renamed into place only once every one of them is written, so that a
failed write leaves what was there before."""
import codecs
import os
import stat
import tempfile

# Byte-order marks, longest first (the UTF-32 LE mark begins with the UTF-16 LE one).
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def check_regular_file(path, what="file"):
    """`path` as a str if it is a regular file (or a link to one); FileNotFoundError if there is nothing there,
    ValueError if it is something else (a folder, a FIFO, a device, a socket), naming `what` and the path."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a file path (str or os.PathLike), got {type(path).__name__} {path!r}")
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "not a regular file")
        raise ValueError(f"{what} {path} is {kind}, not a regular file")
    return path


def read_text(path, what="file"):
    """The text of the regular file `path`: decoded from its byte-order mark (UTF-8, UTF-16, UTF-32) if it has
    one, else as UTF-8. ValueError naming the file and line if it is not text in one of those encodings."""
    path = check_regular_file(path, what)
    with open(path, "rb") as f:
        data = f.read()
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ValueError(f"{what} {path}: line {line} is not {encoding.upper()} text (byte {data[error.start]:#04x}); "
                         "save the file as UTF-8 (or with a byte-order mark)") from None
    return text.lstrip("\ufeff")   # utf-16 / utf-32 keep no mark; a second one would be a stray character


def write_files(contents):
    """Write {path: bytes or str} so that each file is either its old self or completely new: every file is
    first written to a temporary name in its folder (created if missing), and only then are they renamed into
    place. If any write fails, the temporary files are removed and nothing was replaced."""
    written = []
    try:
        for path, data in contents.items():
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
            written.append((temporary, path))
            os.fchmod(fd, 0o666 & ~_umask())   # what open() would have given (mkstemp gives 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        for temporary, _ in written:
            os.remove(temporary)
        raise
    for temporary, path in written:
        os.replace(temporary, path)


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable_folder(path, what="folder"):
    """Create the folder `path` if needed and check that a file can be written in it, before any long work
    that would write there at its end. OSError naming `what` and the path otherwise."""
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{what} is empty: name a folder")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise OSError(f"{what} {path} is not a writable folder ({error.strerror or error})") from None
    return path
