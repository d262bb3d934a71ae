# Condenses `pip install` output for `make setup`: one line per package pip fetches and a count
# at the end, instead of ~300 lines (or, with --quiet, a minute or two of nothing). pip's
# errors and warnings go to stderr and are not filtered. Tested in tests/deploy/test_setup_output.py.
/^Collecting / { print "  pip: collecting " $2; fflush() }
/^Successfully installed / { print "  pip: installed " NF - 2 " packages"; fflush() }
