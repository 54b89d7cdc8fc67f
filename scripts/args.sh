# Sourced by the numbered scripts and demo.sh (not run): their first arguments are paths, so
#   panns_script_args <script> <number of path arguments, N+ if options after them are passed on> "$@"
# prints the script's usage (its header comment, up to 'set -euo pipefail') for -h/--help and exits 0,
# and refuses an option given where a path belongs with one line, exit 2 (it became a folder named
# '--help', or mkdir's 'unrecognized option', after the default workspace was made in the current directory),
# and, unless the count ends in '+', refuses arguments after the paths (an unquoted path with a space).
# panns_script_usage <script> prints the usage alone (0_inference.sh, which takes no arguments).
panns_script_usage() {   # <script>: its header comment, the usage
  sed -n '2,/^set -euo pipefail/{/^set -euo pipefail/d;s/^# \{0,1\}//;p;}' "$1"
}

panns_script_args() {   # <script> <paths: N, or N+ when options after them are passed on> "$@"
  local script="$1" count="${2%+}" more="$2" arg
  shift 2
  for arg in "${@:1:$count}"; do
    case "$arg" in
      -h|--help) panns_script_usage "$script"; exit 0 ;;
      -*) echo "error: $arg: the arguments are paths; bash $script --help shows the usage" >&2
          exit 2 ;;
    esac
  done
  if [ "$more" = "$count" ] && [ "$#" -gt "$count" ]; then   # was ignored: '--help' there ran the whole job
    case "${*:$((count + 1)):1}" in
      -h|--help) panns_script_usage "$script"; exit 0 ;;
    esac
    echo "error: unexpected argument '${*:$((count + 1)):1}': bash $script takes at most $count path(s)" \
         "(quote a path with spaces); bash $script --help shows the usage" >&2
    exit 2
  fi
}
