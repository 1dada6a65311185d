import sys

from pacs_server.pacsctl import main

sys.exit(main())
