from simple_tftpd.cli import main

main()
